from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

from channels.outbox import Delivery, Outbox
from channels.traffic import SEND_DELAY_BUCKETS_SECONDS, Traffic
from tests.support.encoding import TextEncoding

if TYPE_CHECKING:
    from channels.config import SlowConsumerPolicy


def message(channel: str, offset: int, policy: SlowConsumerPolicy = "disconnect") -> Delivery:
    return Delivery(channel, offset, f"{channel}#{offset}".encode(), policy)


def make(capacity: int = 3, frame_max_bytes: int = 1000) -> Outbox:
    return Outbox(capacity, frame_max_bytes, TextEncoding())


def test_batch_returns_everything_waiting_in_order() -> None:
    outbox = make()
    assert outbox.offer(message("a", 1))
    assert outbox.offer(message("b", 1))
    assert outbox.take_batch() == [b"a#1", b"b#1"]
    assert len(outbox) == 0


def test_batch_stops_at_frame_max_bytes_but_takes_at_least_one() -> None:
    outbox = make(capacity=10, frame_max_bytes=9)
    for offset in range(1, 4):
        outbox.offer(message("a", offset))  # 3 bytes each: "[a#1,a#2]" is 9 bytes
    assert outbox.take_batch() == [b"a#1", b"a#2"]
    assert outbox.take_batch() == [b"a#3"]
    big = Delivery("a", 4, b"x" * 50)
    outbox.offer(big)
    assert outbox.take_batch() == [b"x" * 50]


def test_notify_is_called_for_whatever_there_is_to_send() -> None:
    outbox = make(capacity=1)
    calls: list[str] = []
    outbox.notify = lambda: calls.append("notify")
    outbox.offer(message("a", 1))
    outbox.put_nowait(b"reply")
    outbox.record_gap("a", 2, 2)
    assert calls == ["notify"] * 3
    pending_before = outbox.pending
    outbox.take_batch()
    assert (pending_before, outbox.pending) == (True, False)
    outbox.close()
    assert calls == ["notify"] * 4  # a closing outbox wants its sender to finish


def test_messages_notify_only_when_they_arrive_in_an_empty_queue() -> None:
    outbox = make(capacity=10)
    calls: list[str] = []
    outbox.notify = lambda: calls.append("notify")
    for offset in range(1, 6):
        outbox.offer(message("a", offset))
    assert calls == ["notify"]  # the sender comes back for the rest by itself
    outbox.take_batch()
    outbox.offer(message("a", 6))
    assert calls == ["notify"] * 2


def test_take_frame_joins_a_batch() -> None:
    outbox = make()
    assert outbox.take_frame() is None
    outbox.offer(message("a", 1))
    assert outbox.take_frame() == b"a#1"
    outbox.offer(message("a", 2))
    outbox.offer(message("a", 3))
    assert outbox.take_frame() == b"[a#2,a#3]"


def test_disconnect_policy_fails_the_outbox() -> None:
    failures: list[bool] = []
    outbox = Outbox(2, 1000, TextEncoding(), on_fail=lambda: failures.append(True))
    assert outbox.offer(message("a", 1))
    assert outbox.offer(message("a", 2))
    assert not outbox.offer(message("a", 3))
    assert outbox.failed
    assert not outbox.offer(message("b", 1))
    assert outbox.take_batch() == []  # what was queued is discarded
    assert failures == [True]


def test_drop_oldest_discards_the_oldest_of_the_same_channel() -> None:
    outbox = make(capacity=3)
    outbox.offer(message("a", 1, "drop_oldest"))
    outbox.offer(message("b", 1))
    outbox.offer(message("a", 2, "drop_oldest"))
    assert outbox.offer(message("a", 3, "drop_oldest"))
    assert outbox.offer(message("a", 4, "drop_oldest"))
    assert not outbox.failed
    assert outbox.dropped == 2
    assert outbox.take_batch() == [b"b#1", b"gap:a:1-2", b"a#3", b"a#4"]


def test_latest_keeps_only_the_newest_of_the_same_channel() -> None:
    outbox = make(capacity=3)
    outbox.offer(message("p", 1, "latest"))
    outbox.offer(message("q", 1, "latest"))
    outbox.offer(message("p", 2, "latest"))
    assert outbox.offer(message("p", 3, "latest"))
    assert outbox.take_batch() == [b"q#1", b"gap:p:1-2", b"p#3"]


@pytest.mark.parametrize("policy", ["drop_oldest", "latest"])
def test_lossy_policy_drops_the_new_message_when_its_channel_has_none_queued(
    policy: SlowConsumerPolicy,
) -> None:
    outbox = make(capacity=2)
    outbox.offer(message("b", 1))
    outbox.offer(message("b", 2))
    assert not outbox.offer(message("a", 7, policy))
    assert not outbox.offer(message("a", 8, policy))
    assert not outbox.failed
    # The gap is reported once the messages queued before it are sent.
    assert outbox.take_batch() == [b"b#1", b"b#2", b"gap:a:7-8"]
    assert outbox.offer(message("a", 9, policy))
    assert outbox.take_batch() == [b"a#9"]


async def test_replies_wait_for_room_and_are_never_dropped() -> None:
    outbox = make(capacity=2)
    outbox.offer(message("a", 1, "drop_oldest"))
    outbox.offer(message("a", 2, "drop_oldest"))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.put, b"reply")
            await anyio.wait_all_tasks_blocked()
            assert len(outbox) == 2
            assert outbox.take_batch() == [b"a#1", b"a#2"]
    # With the queue full of replies, a lossy message is the one dropped, not a reply.
    outbox.put_nowait(b"reply 2")
    assert not outbox.offer(message("a", 3, "drop_oldest"))
    assert outbox.take_batch() == [b"reply", b"reply 2", b"gap:a:3-3"]


def test_a_gap_never_precedes_an_earlier_reply() -> None:
    outbox = make(capacity=3)
    outbox.put_nowait(b"reply q")
    outbox.offer(message("q", 1))
    outbox.put_nowait(b"reply p")  # a subscribe reply, then its channel's messages
    assert not outbox.offer(message("p", 1, "latest"))  # full: nothing of p to drop
    assert not outbox.offer(message("p", 2, "latest"))
    assert outbox.take_batch() == [b"reply q", b"q#1", b"reply p", b"gap:p:1-2"]


def test_a_gap_after_a_replay_goes_after_the_replayed_messages() -> None:
    outbox = make(capacity=10)
    outbox.offer(message("c", 3))
    outbox.offer(message("c", 4))
    outbox.record_gap("c", 5, 6)  # held live messages dropped while the replay was read
    outbox.offer(message("c", 7))
    assert outbox.take_batch() == [b"c#3", b"c#4", b"gap:c:5-6", b"c#7"]
    assert outbox.dropped == 2


@pytest.mark.parametrize("frame_max_bytes", [1, 9, 10, 17, 40])
def test_a_coalesced_frame_never_exceeds_frame_max_bytes(frame_max_bytes: int) -> None:
    outbox = make(capacity=4, frame_max_bytes=frame_max_bytes)
    for offset in range(1, 30):
        outbox.offer(message("a", offset, "drop_oldest"))
        outbox.offer(message("b", offset, "latest"))
    outbox.put_nowait("réponse".encode())  # a reply counts in UTF-8 bytes
    while len(outbox):
        items = outbox.take_batch()
        frame = items[0] if len(items) == 1 else b"[" + b",".join(items) + b"]"
        assert len(items) == 1 or len(frame) <= frame_max_bytes


async def test_a_reply_waits_again_if_the_room_is_taken_first() -> None:
    outbox = make(capacity=2, frame_max_bytes=4)  # one 3-byte message per batch
    outbox.offer(message("a", 1, "drop_oldest"))
    outbox.offer(message("a", 2, "drop_oldest"))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.put, b"reply")
            await anyio.wait_all_tasks_blocked()
            assert outbox.take_batch() == [b"a#1"]
            outbox.offer(message("a", 3, "drop_oldest"))  # takes the freed room at once
            await anyio.wait_all_tasks_blocked()
            assert len(outbox) == 2  # the reply still waits: the queue is full again
            assert outbox.take_batch() == [b"a#2"]
    assert outbox.take_batch() == [b"a#3"]
    assert outbox.take_batch() == [b"reply"]


def test_a_closed_outbox_is_not_failed() -> None:
    outbox = make(capacity=1)
    outbox.offer(message("a", 1))
    outbox.close()
    outbox.fail()
    assert not outbox.failed
    assert outbox.take_batch() == [b"a#1"]


async def test_close_keeps_what_is_queued_and_refuses_more() -> None:
    outbox = make()
    outbox.offer(message("a", 1))
    outbox.close()
    assert outbox.closed
    assert not outbox.offer(message("a", 2))
    await outbox.put(b"ignored after close")
    assert outbox.take_batch() == [b"a#1"]
    assert outbox.take_batch() == []


async def test_failure_wakes_a_waiting_reply() -> None:
    outbox = make(capacity=1)
    outbox.offer(message("a", 1))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(outbox.put, b"reply")
            await anyio.wait_all_tasks_blocked()
            outbox.fail()
    assert outbox.failed


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        make(capacity=0)


def test_frames_messages_bytes_and_delays_are_counted() -> None:
    traffic = Traffic()
    outbox = Outbox(10, 1000, TextEncoding(), traffic=traffic)
    published = time.monotonic() - 0.003  # reached the hub 3 ms ago
    outbox.offer(Delivery("a", 1, b"a#1", published=published))
    assert outbox.take_frame() == b"a#1"  # alone: the fast path
    outbox.put_nowait(b"reply")
    assert outbox.take_frame() == b"reply"  # not a channel message: no delay
    outbox.offer(Delivery("a", 2, b"a#2", published=published))
    outbox.offer(Delivery("a", 3, b"a#3", published=time.monotonic()))
    outbox.put_nowait(b"reply")
    assert outbox.take_frame() == b"[a#2,a#3,reply]"
    assert (traffic.frames, traffic.messages, traffic.deliveries) == (3, 5, 3)
    assert traffic.bytes == len(b"a#1") + len(b"reply") + len(b"[a#2,a#3,reply]")
    # One delay per frame that held a channel message, the oldest one's: 3 ms or more.
    assert sum(traffic.delay_counts) == 2
    assert traffic.delay_counts[: SEND_DELAY_BUCKETS_SECONDS.index(0.0025) + 1] == [0, 0, 0]
    assert traffic.delay_sum_seconds >= 0.006
