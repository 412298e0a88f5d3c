from __future__ import annotations

import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from channels.brokers.memory import MemoryBroker
from channels.config import ChannelRule, Config, History, ServerConfig, SlowConsumerPolicy
from channels.control import Disconnect, Ending, Unsubscribe
from channels.errors import (
    AlreadySubscribed,
    BrokerUnavailable,
    ChannelNotFound,
    ChannelsError,
    InvalidChannelName,
    MessageTooLarge,
    NotSubscribed,
    PermissionDenied,
    PresenceDisabled,
    ServerClosing,
)
from channels.hub import Hub, Subscribed, open_hub
from channels.outbox import Outbox
from channels.publication import ClientInfo, HistoryPage, Position, Publication
from channels.rules import Grant, NameKind
from tests.support.data import raw
from tests.support.encoding import TextEncoding
from tests.support.receiver import Recorder

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


CONFIG = Config(
    channels=[
        ChannelRule(match="chat:*", history=History(size=5)),
        ChannelRule(match="news", publish=False, max_message_bytes=10),
        ChannelRule(match="open"),
    ]
)


def outbox(capacity: int = 100) -> Outbox:
    return Outbox(capacity, 1 << 20, TextEncoding())


async def drain(box: Outbox) -> list[str]:
    return [item.decode() for item in box.take_batch()]


async def subscribe(
    hub: Hub, box: Outbox, channel: str, since: Position | None = None
) -> Subscribed:
    """Subscribe and return the one `Subscribed` the hub announced."""
    replies: list[Subscribed] = []
    await hub.subscribe(box, channel, since=since, on_subscribed=replies.append)
    (reply,) = replies
    return reply


async def test_publish_reaches_every_subscriber_encoded_once() -> None:
    encoder = TextEncoding()
    async with open_hub(CONFIG, encoder) as hub:
        boxes = [outbox() for _ in range(50)]
        for box in boxes:
            hub.attach(box)
            await subscribe(hub, box, "chat:1")
        position = (await hub.publish("chat:1", raw("hi"), trusted=False)).position
        assert position.offset == 1
        assert encoder.calls == 1
        for box in boxes:
            assert await drain(box) == ['chat:1:1:"hi"']


async def test_subscribers_of_two_wires_get_each_message_encoded_once_per_wire() -> None:
    native, other = TextEncoding(), TextEncoding(batches=False)
    config = Config(channels=[ChannelRule(match="*", join_leave=True)])
    async with open_hub(config, native) as hub:
        ours = [outbox() for _ in range(3)]
        theirs = [Outbox(100, 1 << 20, other) for _ in range(3)]
        for box in ours + theirs:
            hub.attach(box, ClientInfo(f"c{len(hub._clients)}", None))
            await subscribe(hub, box, "room")
        await hub.publish("room", raw(1), trusted=False)
        await hub.publish("room", raw(2), trusted=False)
        # A wire that batches takes what waits at once; the other one message per frame.
        assert (await drain(ours[0]))[-2:] == ["room:1:1", "room:2:2"]
        for box in theirs:
            frames = [box.take_frame() for _ in range(len(box))]
            assert frames[-2:] == [b"room:1:1", b"room:2:2"]
            assert box.take_frame() is None
        # Each message was encoded once per wire, the other wire's when first sent.
        assert (native.calls, other.calls) == (2, 2)
        # Events too go to each connection in its own wire's encoding.
        assert frames[0] == b"join:room:c5"


async def test_channels_are_isolated_and_order_is_kept() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        one, two = outbox(), outbox()
        hub.attach(one)
        hub.attach(two)
        await subscribe(hub, one, "chat:1")
        await subscribe(hub, two, "chat:2")
        for index in range(3):
            await hub.publish("chat:1", raw(index), trusted=False)
        await hub.publish("chat:2", raw("x"), trusted=False)
        assert await drain(one) == ["chat:1:1:0", "chat:1:2:1", "chat:1:3:2"]
        assert await drain(two) == ['chat:2:1:"x"']


async def test_subscribe_reports_the_current_position() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        await hub.publish("chat:1", raw(1), trusted=False)
        box = outbox()
        hub.attach(box)
        reply = await subscribe(hub, box, "chat:1")
        assert reply.position.offset == 1
        assert reply.recovered is None
        assert await drain(box) == []


async def test_rules_apply_to_publish() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        with pytest.raises(PermissionDenied, match="clients may not publish on channel 'news'"):
            await hub.publish("news", raw(1), trusted=False)
        assert (await hub.publish("news", raw(1), trusted=True)).position.offset == 1
        with pytest.raises(MessageTooLarge, match="12 bytes exceeds the 10-byte limit"):
            await hub.publish("news", raw("x" * 10), trusted=True)
        with pytest.raises(ChannelNotFound):
            await hub.publish("elsewhere", raw(1), trusted=True)
        with pytest.raises(InvalidChannelName):
            await hub.publish("bad name", raw(1), trusted=True)


async def test_subscription_errors() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        box = outbox()
        hub.attach(box)
        await subscribe(hub, box, "chat:1")
        with pytest.raises(AlreadySubscribed):
            await subscribe(hub, box, "chat:1")
        with pytest.raises(ChannelNotFound):
            await subscribe(hub, box, "elsewhere")
        with pytest.raises(NotSubscribed):
            hub.unsubscribe(box, "chat:2")
        hub.unsubscribe(box, "chat:1")
        await hub.publish("chat:1", raw(1), trusted=False)
        assert await drain(box) == []


async def test_recovery_replays_exactly_what_was_missed() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        box = outbox()
        hub.attach(box)
        first = await subscribe(hub, box, "chat:1")
        await hub.publish("chat:1", raw("seen"), trusted=False)
        seen = Position(1, first.position.epoch)
        hub.detach(box)
        for index in range(3):
            await hub.publish("chat:1", raw(index), trusted=False)
        again = outbox()
        hub.attach(again)
        reply = await subscribe(hub, again, "chat:1", since=seen)
        assert reply.recovered is True
        assert reply.position == Position(4, first.position.epoch)
        await hub.publish("chat:1", raw("live"), trusted=False)
        assert await drain(again) == ["chat:1:2:0", "chat:1:3:1", "chat:1:4:2", 'chat:1:5:"live"']


@pytest.mark.parametrize(
    ("since", "published"),
    [
        (lambda epoch: Position(1, "other-epoch"), 2),
        (lambda epoch: Position(1, epoch), 10),  # history keeps 5: offsets 2..5 are gone
        (lambda epoch: Position(99, epoch), 2),  # from the future
    ],
    ids=["epoch-changed", "trimmed", "ahead-of-stream"],
)
async def test_recovery_impossible_is_reported_and_replays_nothing(
    since: object, published: int
) -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        box = outbox()
        hub.attach(box)
        epoch = (await subscribe(hub, box, "chat:1")).position.epoch
        hub.detach(box)
        for index in range(published):
            await hub.publish("chat:1", raw(index), trusted=False)
        again = outbox()
        hub.attach(again)
        reply = await subscribe(hub, again, "chat:1", since=since(epoch))  # type: ignore[operator]
        assert reply.recovered is False
        assert reply.position.offset == published
        assert await drain(again) == []


async def test_recovery_of_more_than_the_limit_is_refused() -> None:
    config = Config(
        server=ServerConfig(recovery_max_messages=2),
        channels=[ChannelRule(match="*", history=History(size=10))],
    )
    async with open_hub(config, TextEncoding()) as hub:
        await hub.publish("c", raw(0), trusted=False)
        box = outbox()
        hub.attach(box)
        epoch = (await subscribe(hub, box, "c")).position.epoch
        hub.unsubscribe(box, "c")
        for index in range(3):
            await hub.publish("c", raw(index), trusted=False)
        reply = await subscribe(hub, box, "c", since=Position(1, epoch))
        assert reply.recovered is False
        hub.unsubscribe(box, "c")
        reply = await subscribe(hub, box, "c", since=Position(2, epoch))
        assert reply.recovered is True
        assert await drain(box) == ["c:3:1", "c:4:2"]


class Gate:
    """A point where a broker call stops until the test opens it."""

    def __init__(self) -> None:
        self.reached = anyio.Event()
        self.opened = anyio.Event()

    async def pass_through(self) -> None:
        self.reached.set()
        await self.opened.wait()


class GatedBroker(MemoryBroker):
    """A memory broker that can stop after `subscribe`, `read` and `presence`, so that
    tests publish (or reload) at exactly those points of a subscribe or a read."""

    after_subscribe: Gate | None = None
    after_read: Gate | None = None
    after_presence: Gate | None = None

    async def presence(self, channel: str) -> list[ClientInfo]:
        clients = await super().presence(channel)
        if self.after_presence is not None:
            await self.after_presence.pass_through()
        return clients

    async def read(
        self, channel: str, *, after: int | None, epoch: str | None, limit: int | None
    ) -> HistoryPage:
        page = await super().read(channel, after=after, epoch=epoch, limit=limit)
        if self.after_read is not None:
            await self.after_read.pass_through()
        return page

    async def subscribe(self, channel: str) -> None:
        await super().subscribe(channel)
        if self.after_subscribe is not None:
            await self.after_subscribe.pass_through()


@asynccontextmanager
async def gated_hub(config: Config) -> AsyncIterator[tuple[Hub, GatedBroker]]:
    hub = Hub(config, TextEncoding())
    broker = GatedBroker(hub)
    hub.run_on(broker)
    yield hub, broker


async def publish_all(hub: Hub, channel: str, *values: object) -> None:
    for value in values:
        await hub.publish(channel, raw(value), trusted=False)


async def test_recovery_racing_publishes_loses_nothing_and_doubles_nothing() -> None:
    async with gated_hub(CONFIG) as (hub, broker):
        watcher = outbox()
        hub.attach(watcher)
        epoch = (await subscribe(hub, watcher, "chat:1")).position.epoch
        await publish_all(hub, "chat:1", "a", "b")
        broker.after_subscribe, broker.after_read = Gate(), Gate()
        box = outbox()
        hub.attach(box)
        replies: list[Subscribed] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: hub.subscribe(
                        box, "chat:1", since=Position(1, epoch), on_subscribed=replies.append
                    )
                )
                # Offset 3 is published before the history is read: it is both held
                # live and in the page. Offset 4 comes after the read: held only.
                await broker.after_subscribe.reached.wait()
                await publish_all(hub, "chat:1", "c")
                broker.after_subscribe.opened.set()
                await broker.after_read.reached.wait()
                await publish_all(hub, "chat:1", "d")
                assert len(box) == 0
                broker.after_read.opened.set()
        assert replies[0].recovered is True
        assert replies[0].position.offset == 3
        assert await drain(box) == ['chat:1:2:"b"', 'chat:1:3:"c"', 'chat:1:4:"d"']


async def test_plain_subscribe_racing_publishes_starts_after_its_reply_position() -> None:
    async with gated_hub(CONFIG) as (hub, broker):
        broker.after_subscribe, broker.after_read = Gate(), Gate()
        box = outbox()
        hub.attach(box)
        replies: list[Subscribed] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: hub.subscribe(box, "chat:1", since=None, on_subscribed=replies.append)
                )
                await broker.after_subscribe.reached.wait()
                await publish_all(hub, "chat:1", "before")  # included in the position
                broker.after_subscribe.opened.set()
                await broker.after_read.reached.wait()
                await publish_all(hub, "chat:1", "after")
                broker.after_read.opened.set()
        assert replies[0].position.offset == 1
        assert await drain(box) == ['chat:1:2:"after"']


async def test_a_stream_never_restarts_under_a_joining_subscriber() -> None:
    # No history and no other subscriber: a publish while the subscriber joins must
    # not find the stream idle and start a new epoch.
    async with gated_hub(CONFIG) as (hub, broker):
        broker.after_subscribe = Gate()
        box = outbox()
        hub.attach(box)
        replies: list[Subscribed] = []
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: hub.subscribe(box, "open", since=None, on_subscribed=replies.append)
                )
                await broker.after_subscribe.reached.wait()
                first = (await hub.publish("open", raw(1), trusted=False)).position
                broker.after_subscribe.opened.set()
        assert replies[0].position == first
        second = (await hub.publish("open", raw(2), trusted=False)).position
        assert (second.offset, second.epoch) == (2, first.epoch)
        assert await drain(box) == ["open:2:2"]


async def test_cancelled_subscribe_leaves_nothing_behind() -> None:
    async with gated_hub(CONFIG) as (hub, broker):
        broker.after_read = Gate()
        box = outbox()
        hub.attach(box)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(subscribe, hub, box, "chat:1")
                await broker.after_read.reached.wait()
                tg.cancel_scope.cancel()
        stats = hub.statistics()
        assert (stats.channels, stats.subscriptions) == (0, 0)
        assert broker.stream_count == 0


async def test_a_joining_subscriber_that_outgrows_its_outbox_is_failed_under_disconnect() -> None:
    async with gated_hub(CONFIG) as (hub, broker):
        broker.after_read = Gate()
        box = outbox(capacity=2)
        hub.attach(box)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(subscribe, hub, box, "chat:1")
                await broker.after_read.reached.wait()
                await publish_all(hub, "chat:1", 0, 1)
                failed_before = box.failed
                await publish_all(hub, "chat:1", 2)
                broker.after_read.opened.set()
        assert (failed_before, box.failed) == (False, True)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("latest", ["gap:p:1-4", "p:5:5"]),
        ("drop_oldest", ["gap:p:1-3", "p:4:4", "p:5:5"]),
    ],
)
async def test_a_joining_subscriber_overflowing_under_a_lossy_policy_gets_a_gap(
    policy: SlowConsumerPolicy, expected: list[str]
) -> None:
    config = Config(channels=[ChannelRule(match="p", slow_consumer=policy)])
    async with gated_hub(config) as (hub, broker):
        broker.after_read = Gate()
        box = outbox(capacity=2)
        hub.attach(box)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(subscribe, hub, box, "p")
                await broker.after_read.reached.wait()
                await publish_all(hub, "p", 1, 2, 3, 4, 5)
                broker.after_read.opened.set()
        assert not box.failed
        assert await drain(box) == expected


async def test_detach_cleans_up_and_statistics_count() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        boxes = [outbox() for _ in range(3)]
        for box in boxes:
            hub.attach(box)
            await subscribe(hub, box, "chat:1")
            await subscribe(hub, box, "open")
        stats = hub.statistics()
        assert (stats.connections, stats.channels, stats.subscriptions) == (3, 2, 6)
        await hub.publish("open", raw(1), trusted=False)
        for box in boxes:
            hub.detach(box)
            hub.detach(box)  # idempotent
        stats = hub.statistics()
        assert (stats.connections, stats.channels, stats.subscriptions) == (0, 0, 0)
        assert stats.published == 1


async def test_policy_drops_are_counted_in_statistics() -> None:
    config = Config(channels=[ChannelRule(match="*", slow_consumer="latest")])
    async with open_hub(config, TextEncoding()) as hub:
        box = outbox(capacity=1)
        hub.attach(box)
        await subscribe(hub, box, "p")
        for index in range(4):
            await hub.publish("p", raw(index), trusted=False)
        assert hub.statistics().dropped == 3
        hub.detach(box)
        assert hub.statistics().dropped == 3


async def test_close_refuses_new_work_and_closes_outboxes() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        box = outbox()
        hub.attach(box)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.wait_no_connections)
                hub.close()
                assert box.closed
                with pytest.raises(ServerClosing):
                    hub.attach(outbox())
                with pytest.raises(ServerClosing):
                    await hub.publish("open", raw(1), trusted=True)
                with pytest.raises(ServerClosing):
                    await subscribe(hub, box, "open")
                hub.detach(box)


async def test_history_reads_newest_or_after_an_offset() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        for index in range(8):
            await hub.publish("chat:1", raw(index), trusted=False)
        page = await hub.history("chat:1", after=None, limit=None)
        assert [item.offset for item in page.publications] == [4, 5, 6, 7, 8]
        page = await hub.history("chat:1", after=None, limit=2)
        assert [item.offset for item in page.publications] == [7, 8]
        page = await hub.history("chat:1", after=5, limit=2)
        assert [item.offset for item in page.publications] == [6, 7]
        assert page.complete
        page = await hub.history("chat:1", after=1, limit=None)
        assert not page.complete
        page = await hub.history("open", after=None, limit=None)
        assert page.publications == []
        with pytest.raises(ChannelNotFound):
            await hub.history("elsewhere", after=None, limit=None)


class RemoteBroker(MemoryBroker):
    """A broker whose stream is ahead of what it delivered here (messages on their way
    from Redis): a read sees offsets 1 and 2 before their live copies arrive."""

    def __init__(self) -> None:
        super().__init__(Recorder())
        self.kept = [Publication("open", offset, raw(offset)) for offset in (1, 2)]

    async def read(
        self, channel: str, *, after: int | None, epoch: str | None, limit: int | None
    ) -> HistoryPage:
        await anyio.lowlevel.checkpoint()
        found = [item for item in self.kept if after is not None and item.offset > after]
        return HistoryPage(Position(2, "e"), found, complete=True)


async def test_live_copies_of_replayed_messages_are_not_delivered_again() -> None:
    hub = Hub(CONFIG, TextEncoding())
    broker = RemoteBroker()
    hub.run_on(broker)
    recovering, fresh = outbox(), outbox()
    for box in (recovering, fresh):
        hub.attach(box)
    await subscribe(hub, recovering, "open", since=Position(0, "e"))
    await subscribe(hub, fresh, "open")
    for publication in [*broker.kept, Publication("open", 3, raw(3))]:
        hub.deliver(publication)  # the live copies of 1 and 2 arrive late, then 3
    assert await drain(recovering) == ["open:1:1", "open:2:2", "open:3:3"]
    assert await drain(fresh) == ["open:3:3"]


async def test_messages_the_broker_lost_reach_subscribers_as_a_gap() -> None:
    hub = Hub(CONFIG, TextEncoding())
    hub.run_on(RemoteBroker())
    box = outbox()
    hub.attach(box)
    await subscribe(hub, box, "open")
    hub.lost("open", 3, 5)
    hub.deliver(Publication("open", 6, raw(6)))
    assert await drain(box) == ["gap:open:3-5", "open:6:6"]


async def test_a_restarted_stream_is_announced_before_its_messages() -> None:
    hub = Hub(CONFIG, TextEncoding())
    hub.run_on(RemoteBroker())
    box = outbox()
    hub.attach(box)
    await subscribe(hub, box, "open", since=Position(0, "e"))
    assert await drain(box) == ["open:1:1", "open:2:2"]
    hub.restarted("open", "e2")
    hub.deliver(Publication("open", 1, raw("new")))  # not taken for the old offset 1
    assert await drain(box) == ["restart:open:e2", 'open:1:"new"']


PRESENCE = Config(
    channels=[ChannelRule(match="room", presence=True, join_leave=True), ChannelRule(match="open")]
)


async def test_presence_and_join_leave_events() -> None:
    async with open_hub(PRESENCE, TextEncoding()) as hub:
        alice, bob = outbox(), outbox()
        alice_info = hub.attach(alice)
        bob_info = hub.attach(bob, ClientInfo("bob", user="u-bob"))
        await subscribe(hub, alice, "room")
        assert await drain(alice) == [f"join:room:{alice_info.client}"]
        await subscribe(hub, bob, "room")
        assert await drain(alice) == ["join:room:bob"]
        assert await drain(bob) == ["join:room:bob"]
        assert sorted(await hub.presence("room"), key=lambda info: info.client) == sorted(
            [alice_info, bob_info], key=lambda info: info.client
        )
        hub.unsubscribe(bob, "room")
        assert await drain(alice) == ["leave:room:bob"]
        assert await hub.presence("room") == [alice_info]
        hub.detach(alice)  # a disconnect leaves too
        assert await hub.presence("room") == []
        with pytest.raises(PresenceDisabled):
            await hub.presence("open")


async def test_a_loss_before_a_subscriber_started_is_not_reported_to_it() -> None:
    hub = Hub(CONFIG, TextEncoding())
    hub.run_on(RemoteBroker())
    box = outbox()
    hub.attach(box)
    await subscribe(hub, box, "open")  # starts at offset 2, not yet delivered here
    hub.lost("open", 1, 3)
    hub.deliver(Publication("open", 4, raw(4)))
    assert await drain(box) == ["gap:open:3-3", "open:4:4"]


async def test_a_reload_ends_only_the_subscriptions_the_new_rules_refuse() -> None:
    before = Config(
        channels=[
            ChannelRule(match="open:*"),
            ChannelRule(match="team:*", subscribe="authenticated"),
            ChannelRule(match="vip:*", private=True),
            ChannelRule(match="gone:*"),
        ]
    )
    after = Config(
        server=ServerConfig(max_subscriptions=3),
        channels=[
            ChannelRule(match="open:*", slow_consumer="latest"),
            ChannelRule(match="team:*", subscribe="authenticated"),
            ChannelRule(match="vip:*", private=True),
            ChannelRule(match="members:*", subscribe="authenticated"),
            ChannelRule(match="now-private:*", private=True),
        ],
    )
    async with open_hub(before, TextEncoding()) as hub:
        anonymous, alice = outbox(), outbox()
        hub.attach(anonymous)
        hub.attach(alice, ClientInfo("a", "alice"), Grant("alice"))
        for channel in ("open:1", "gone:1"):
            await subscribe(hub, anonymous, channel)
        for channel in ("open:1", "team:1", "gone:1"):
            await subscribe(hub, alice, channel)
        replies: list[Subscribed] = []
        await hub.subscribe(
            alice, "vip:1", since=None, on_subscribed=replies.append, private_ok=True
        )
        await drain(anonymous)
        await drain(alice)
        assert hub.reconfigure(after) == 2
        assert await drain(anonymous) == ["ended:gone:1:201"]
        assert await drain(alice) == ["ended:gone:1:201"]
        await hub.publish("open:1", raw(1), trusted=True)
        await hub.publish("vip:1", raw(2), trusted=True)
        assert await drain(alice) == ["open:1:1:1", "vip:1:1:2"]
        assert hub.statistics().subscriptions == 1 + 3
        # The new limits hold for what comes next.
        await subscribe(hub, anonymous, "open:2")
        await subscribe(hub, anonymous, "open:3")
        with pytest.raises(ChannelsError, match="3"):
            await subscribe(hub, anonymous, "open:4")


async def test_a_reload_ends_a_subscription_whose_access_narrowed() -> None:
    before = Config(channels=[ChannelRule(match="*")])
    after = Config(
        channels=[
            ChannelRule(match="members", subscribe="authenticated"),
            ChannelRule(match="secret", private=True),
            ChannelRule(match="*"),
        ]
    )
    async with open_hub(before, TextEncoding()) as hub:
        anonymous = outbox()
        hub.attach(anonymous)
        for channel in ("members", "secret", "open"):
            await subscribe(hub, anonymous, channel)
        await drain(anonymous)
        assert hub.reconfigure(after) == 2
        assert sorted(await drain(anonymous)) == ["ended:members:202", "ended:secret:202"]
        await hub.publish("open", raw(1), trusted=True)
        assert await drain(anonymous) == ["open:1:1"]


async def test_a_reload_during_a_subscribe_is_checked_when_it_has_read_its_start() -> None:
    before = Config(channels=[ChannelRule(match="chat:*"), ChannelRule(match="news")])
    after = Config(channels=[ChannelRule(match="news")])  # chat:* is gone
    async with gated_hub(before) as (hub, broker):
        broker.after_read = Gate()
        box = outbox()
        hub.attach(box)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                failed: list[BaseException] = []

                async def joining() -> None:
                    try:
                        await subscribe(hub, box, "chat:1")
                    except ChannelNotFound as exc:
                        failed.append(exc)

                tg.start_soon(joining)
                await broker.after_read.reached.wait()
                assert hub.reconfigure(after) == 0  # the joining channel has no rule now
                broker.after_read.opened.set()
        assert [type(exc) for exc in failed] == [ChannelNotFound]
        stats = hub.statistics()
        assert (stats.channels, stats.subscriptions) == (0, 0)
        assert await drain(box) == []


@pytest.mark.parametrize("read", ["history", "presence"])
async def test_a_reload_during_a_read_decides_its_answer(read: str) -> None:
    # The broker answered under the old rules; the answer goes out under the new ones.
    before = Config(channels=[ChannelRule(match="*", presence=True, history=History(size=5))])
    after = Config(channels=[ChannelRule(match="*", subscribe="authenticated", presence=True)])
    async with gated_hub(before) as (hub, broker):
        member, anonymous = outbox(), outbox()
        hub.attach(member, ClientInfo(client="m1", user="alice"))
        hub.attach(anonymous)
        await subscribe(hub, member, "room")
        await hub.publish("room", raw("secret"), trusted=True)
        gate = broker.after_read = broker.after_presence = Gate()
        refused: list[BaseException] = []

        async def reading() -> None:
            try:
                if read == "history":
                    await hub.history("room", after=None, limit=None, by=anonymous)
                else:
                    await hub.presence("room", by=anonymous)
            except PermissionDenied as exc:
                refused.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reading)
                await gate.reached.wait()
                hub.reconfigure(after)
                gate.opened.set()
        assert [type(exc) for exc in refused] == [PermissionDenied]


class StuckTransport:
    """A connection's transport whose client never reads: every send waits forever."""

    async def send_text(self, data: str) -> None:
        await anyio.sleep_forever()


async def test_a_connection_is_attached_for_its_block_and_leaves_every_channel_after() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        ended = anyio.Event()
        with hub.connect(StuckTransport(), on_end=ended.set) as connection:
            assert hub.connection_count == 1
            await connection.subscribe("open", on_subscribed=lambda subscribed: None)
            assert hub.statistics().subscriptions == 1
        assert (hub.connection_count, hub.statistics().channels) == (0, 0)
        assert not ended.is_set()


async def test_a_connection_ends_as_a_slow_consumer_and_as_the_hub_closes() -> None:
    config = Config(channels=[ChannelRule(match="*")], server=ServerConfig(outbox_messages=2))
    async with open_hub(config, TextEncoding()) as hub:
        slow = anyio.Event()
        with hub.connect(StuckTransport(), on_end=slow.set) as connection:
            await connection.subscribe("open", on_subscribed=lambda subscribed: None)
            with anyio.fail_after(5):
                while not slow.is_set():
                    await hub.publish("open", raw(1), trusted=True)
            assert connection.failed
        closing = anyio.Event()
        with hub.connect(StuckTransport(), on_end=closing.set) as connection:
            hub.close()
            with anyio.fail_after(5):
                await closing.wait()  # it held nothing: it ends at once
            assert connection.closed
        with pytest.raises(ServerClosing), hub.connect(StuckTransport(), on_end=slow.set):
            pass


async def test_a_user_banned_while_connecting_is_closed_as_it_attaches() -> None:
    async with open_hub(CONFIG, TextEncoding()) as hub:
        ban = Disconnect(user="mallory", code=4100, reason="banned", until=time.time() + 60)
        before = outbox()
        hub.attach(before, ClientInfo("c1", "mallory"))
        hub.command(ban)
        assert (before.closed, before.ending) == (True, Ending(4100, "banned"))
        # A handshake checked before the ban, attached after it: closed at once too.
        late = outbox()
        hub.attach(late, ClientInfo("c2", "mallory"))
        assert (late.closed, late.ending) == (True, Ending(4100, "banned"))
        other = outbox()
        hub.attach(other, ClientInfo("c3", "bob"))
        assert not other.closed
        hub.command(Disconnect(user="mallory", code=4003, reason="x", until=time.time() - 1))
        lifted = outbox()
        hub.attach(lifted, ClientInfo("c4", "mallory"))
        assert not lifted.closed


async def test_a_server_unsubscribe_leaves_a_subscription_still_joining_to_finish() -> None:
    async with gated_hub(CONFIG) as (hub, broker):
        joining = outbox()
        hub.attach(joining, ClientInfo("c1", "alice"))
        broker.after_subscribe = gate = Gate()
        async with anyio.create_task_group() as tg:
            tg.start_soon(subscribe, hub, joining, "open")
            await gate.reached.wait()
            hub.command(Unsubscribe(user="alice", channel="open"))  # while it joins
            gate.opened.set()
        assert await drain(joining) == []  # subscribed, nothing ended
        hub.command(Unsubscribe(user="alice", channel="open"))  # live now: ended
        assert await drain(joining) == ["ended:open:210"]


async def test_a_failed_subscribe_to_a_channel_of_users_leaves_its_user_uncounted() -> None:
    kinds = [NameKind("presence-", presence=True)]
    config = Config(channels=[ChannelRule(match="*")])
    async with open_hub(config, TextEncoding(), kinds=kinds) as hub:
        watcher, failing, retry = outbox(), outbox(), outbox()
        hub.attach(watcher, ClientInfo("w", "watcher"))
        hub.attach(failing, ClientInfo("f1", "ann"))
        hub.attach(retry, ClientInfo("f2", "ann"))

        async def join(box: Outbox, *, read_presence: bool = False) -> None:
            await hub.subscribe(
                box,
                "presence-room",
                since=None,
                on_subscribed=lambda _: None,
                private_ok=True,
                read_presence=read_presence,
            )

        await join(watcher)
        await drain(watcher)
        broker = hub._carrier

        async def unavailable(channel: str) -> list[ClientInfo]:
            raise BrokerUnavailable("presence", "Redis is down")

        read = broker.presence
        broker.presence = unavailable  # type: ignore[method-assign] # fails after the entry is written
        with pytest.raises(BrokerUnavailable):
            await join(failing, read_presence=True)
        broker.presence = read  # type: ignore[method-assign]
        # Her failed entry was counted out: her next connection is her first, and joins.
        await join(retry)
        assert await drain(watcher) == ["join:presence-room:f2"]
