"""The flusher and the per-connection senders, with an in-memory transport."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import pytest

from channels.outbox import Delivery, Outbox
from channels.sender import Flusher, Sender

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import TaskGroup


class Transport:
    """Records frames. While *blocked*, a send first hands its frame over, then waits
    (as hypercorn's asyncio worker does for a client that does not read)."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.blocked: anyio.Event | None = None
        self.broken = False
        self.sent = anyio.Event()

    async def send_text(self, data: str) -> None:
        if self.broken:
            raise OSError("connection reset")
        self.frames.append(data)
        self.sent.set()
        if self.blocked is not None:
            await self.blocked.wait()

    async def wait_frames(self, count: int) -> list[str]:
        while len(self.frames) < count:
            self.sent = anyio.Event()
            await self.sent.wait()
        return self.frames


class Connection:
    def __init__(self, flusher: Flusher, tg: TaskGroup) -> None:
        self.transport = Transport()
        self.outbox = Outbox(
            100,
            1000,
            lambda channel, first, last: f"gap {first}-{last}",
            encode_restart=lambda channel, epoch: f"restart {epoch}",
        )
        self.done = 0
        self.sender = Sender(self.outbox, self.transport, flusher, self._done)

    def _done(self) -> None:
        self.done += 1

    def offer(self, *offsets: int) -> None:
        for offset in offsets:
            self.outbox.offer(Delivery("c", offset, f"m{offset}", 2))


@asynccontextmanager
async def flushing(
    *, direct: bool, delay: float = 0.01, linger: float = 1.0
) -> AsyncIterator[tuple[Flusher, TaskGroup]]:
    flusher = Flusher(delay, 2, linger, direct=direct)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(flusher.run)
            yield flusher, tg
            tg.cancel_scope.cancel()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])
async def test_messages_within_the_delay_share_one_frame(direct: bool) -> None:
    async with flushing(direct=direct, delay=0.05) as (flusher, tg):
        connection = Connection(flusher, tg)
        connection.offer(1, 2, 3)
        assert await connection.transport.wait_frames(1) == ["[m1,m2,m3]"]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])
async def test_after_a_quiet_spell_the_first_message_goes_at_once(direct: bool) -> None:
    # With a delay far beyond the test's deadline, only the leading edge can send.
    async with flushing(direct=direct, delay=3600) as (flusher, tg):
        connection = Connection(flusher, tg)
        connection.offer(1)
        assert await connection.transport.wait_frames(1) == ["m1"]
        connection.offer(2)  # the next tick waits for the delay: nothing more goes
        await anyio.wait_all_tasks_blocked()
        assert connection.transport.frames == ["m1"]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])
async def test_every_connection_gets_its_frames_in_order(direct: bool) -> None:
    async with flushing(direct=direct) as (flusher, tg):
        connections = [Connection(flusher, tg) for _ in range(7)]
        for offset in range(1, 4):
            for connection in connections:
                connection.offer(offset)
            for connection in connections:
                await connection.transport.wait_frames(offset)
        for connection in connections:
            assert connection.transport.frames == ["m1", "m2", "m3"]


async def test_a_slow_client_gets_a_writer_and_does_not_hold_up_the_others() -> None:
    async with flushing(direct=True) as (flusher, tg):
        slow, fast = Connection(flusher, tg), Connection(flusher, tg)
        slow.transport.blocked = anyio.Event()
        tasks = len(anyio.get_running_tasks())
        slow.offer(1)
        fast.offer(1)
        await fast.transport.wait_frames(1)
        await slow.transport.wait_frames(1)
        # The flusher left the blocked send to a writer task and went on.
        for offset in range(2, 5):
            slow.offer(offset)
            fast.offer(offset)
            await fast.transport.wait_frames(offset)
        assert len(anyio.get_running_tasks()) == tasks + 1  # the slow one's writer
        # The writer handed one more frame over, and waits for the client with it.
        assert len(slow.transport.frames) == 2
        slow.transport.blocked.set()
        slow.transport.blocked = None
        with anyio.fail_after(5):
            while messages(slow.transport.frames) != ["m1", "m2", "m3", "m4"]:
                await slow.transport.wait_frames(len(slow.transport.frames) + 1)


def messages(frames: list[str]) -> list[str]:
    """The messages of *frames*, in order, whatever frames carried them."""
    return [text for frame in frames for text in frame.strip("[]").split(",")]


async def test_an_idle_writer_ends_after_lingering() -> None:
    async with flushing(direct=False, linger=0.05) as (flusher, tg):
        tasks = len(anyio.get_running_tasks())
        connection = Connection(flusher, tg)
        connection.offer(1)
        await connection.transport.wait_frames(1)
        assert len(anyio.get_running_tasks()) == tasks + 1
        await anyio.sleep(0.3)  # well past the 0.05 s linger, a timer in the writer
        assert len(anyio.get_running_tasks()) == tasks
        connection.offer(2)  # a new writer starts when there is more
        assert await connection.transport.wait_frames(2) == ["m1", "m2"]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])
async def test_flush_sends_at_once_without_waiting_for_a_tick(direct: bool) -> None:
    async with flushing(direct=direct, delay=60) as (flusher, tg):
        connection = Connection(flusher, tg)
        connection.outbox.put_nowait("reply")
        await connection.sender.flush()
        assert await connection.transport.wait_frames(1) == ["reply"]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])
async def test_a_broken_transport_ends_the_connection_once(direct: bool) -> None:
    async with flushing(direct=direct) as (flusher, tg):
        connection = Connection(flusher, tg)
        connection.transport.broken = True
        connection.offer(1)
        await connection.sender.flush()
        await anyio.wait_all_tasks_blocked()
        connection.offer(2)
        await connection.sender.flush()
        await anyio.wait_all_tasks_blocked()
        assert connection.done == 1


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])
async def test_a_closed_outbox_is_sent_then_the_connection_is_done(direct: bool) -> None:
    async with flushing(direct=direct) as (flusher, tg):
        connection = Connection(flusher, tg)
        connection.offer(1, 2)
        connection.outbox.close()
        await connection.transport.wait_frames(1)
        while not connection.done:
            await anyio.wait_all_tasks_blocked()
            await anyio.sleep(0.01)
        assert connection.transport.frames == ["[m1,m2]"]
        assert connection.done == 1


async def test_an_empty_closed_outbox_is_done_at_once() -> None:
    async with flushing(direct=True) as (flusher, tg):
        connection = Connection(flusher, tg)
        connection.outbox.close()
        await connection.sender.flush()
        assert connection.done == 1


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])
@pytest.mark.parametrize("had_writer", [False, True], ids=["idle", "after-a-send"])
async def test_closing_an_idle_connection_ends_it_at_the_next_tick(
    direct: bool, had_writer: bool
) -> None:
    # What a drain does to a connection with nothing queued (issue 4: trio drains).
    async with flushing(direct=direct) as (flusher, tg):
        connection = Connection(flusher, tg)
        if had_writer:
            connection.offer(1)
            await connection.transport.wait_frames(1)
        ended = anyio.Event()
        connection.sender._on_done = ended.set
        connection.outbox.close()
        await ended.wait()
        assert connection.transport.frames == (["m1"] if had_writer else [])


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])
async def test_an_outbox_closed_before_its_sender_existed_still_ends(direct: bool) -> None:
    # A drain that comes while the connection is still being accepted.
    async with flushing(direct=direct) as (flusher, _):
        transport = Transport()
        box = Outbox(10, 1000, lambda channel, first, last: "", encode_restart=lambda c, e: "")
        box.close()
        ended = anyio.Event()
        Sender(box, transport, flusher, ended.set)
        await ended.wait()


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])
async def test_a_stopped_sender_sends_nothing_more(direct: bool) -> None:
    async with flushing(direct=direct) as (flusher, tg):
        connection = Connection(flusher, tg)
        connection.sender.stop()
        connection.offer(1)
        await connection.sender.flush()
        await anyio.sleep(0.05)  # more than a tick: nothing may be sent
        assert connection.transport.frames == []
