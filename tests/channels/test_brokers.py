"""What every broker does, checked on the memory broker and on Redis (a real redis-server).

Redis-only behaviour (several nodes, gaps in pub/sub) follows the shared tests.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import coredis
import msgspec
import pytest

from channels.brokers import open_broker
from channels.brokers.redis import RedisBroker
from channels.config import BrokerConfig, History
from channels.control import Disconnect
from channels.errors import BrokerUnavailable
from channels.publication import ClientInfo, Position, Published
from tests.support.data import raw

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from channels.brokers import Broker, Event
    from channels.control import Command
    from channels.publication import Publication
    from tests.support.redis import RedisServer

NO_HISTORY = History()


class Node:
    """A broker with what it delivered and reported lost."""

    def __init__(self) -> None:
        self.delivered: list[Publication] = []
        self.missed: list[tuple[str, int, int]] = []
        self.restarts: list[tuple[str, str]] = []
        self.events: list[tuple[str, Event, str]] = []
        self.commands: list[Command] = []
        self.occupancy_changes: list[tuple[str, bool]] = []
        self.departures: list[tuple[str, str]] = []
        self.arrived = anyio.Event()
        self.broker: Broker

    def deliver(self, publication: Publication) -> None:
        self.delivered.append(publication)
        self.arrived.set()

    def lost(self, channel: str, first: int, last: int) -> None:
        self.missed.append((channel, first, last))
        self.arrived.set()

    def restarted(self, channel: str, epoch: str) -> None:
        self.restarts.append((channel, epoch))

    def event(self, channel: str, event: Event, client: ClientInfo) -> None:
        self.events.append((channel, event, client.client))
        self.arrived.set()

    def command(self, command: Command) -> None:
        self.commands.append(command)
        self.arrived.set()

    def occupancy(self, channel: str, occupied: bool) -> None:
        self.occupancy_changes.append((channel, occupied))
        self.arrived.set()

    def departed(self, channel: str, client: ClientInfo) -> None:
        self.departures.append((channel, client.client))
        self.arrived.set()

    def offsets(self, channel: str = "c") -> list[int]:
        return [item.offset for item in self.delivered if item.channel == channel]

    async def wait_for(self, count: int) -> None:
        """Wait until *count* offsets were delivered or reported lost."""
        while len(self.delivered) + sum(last - first + 1 for _, first, last in self.missed) < count:
            self.arrived = anyio.Event()
            await self.arrived.wait()


async def wait_ready(broker: RedisBroker, ready: bool) -> None:
    while broker.ready != ready:  # noqa: ASYNC110 - the broker's check is periodic
        await anyio.sleep(0.02)


@asynccontextmanager
async def nodes(config: BrokerConfig, count: int = 1) -> AsyncIterator[list[Node]]:
    with anyio.fail_after(20):
        async with AsyncExitStack() as stack:
            opened = []
            for _ in range(count):
                node = Node()
                node.broker = await stack.enter_async_context(open_broker(config, node))
                opened.append(node)
            yield opened


async def test_publish_delivers_in_offset_order(broker_config: BrokerConfig) -> None:
    async with nodes(broker_config) as [node]:
        await node.broker.subscribe("c")
        positions = [
            (await node.broker.publish("c", raw(index), NO_HISTORY)).position for index in range(3)
        ]
        assert [position.offset for position in positions] == [1, 2, 3]
        assert len({position.epoch for position in positions}) == 1
        await node.wait_for(3)
        assert [(item.offset, bytes(item.data)) for item in node.delivered] == [
            (1, b"0"),
            (2, b"1"),
            (3, b"2"),
        ]


async def test_an_idempotency_key_publishes_once_within_its_window(
    broker_config: BrokerConfig,
) -> None:
    history = History(size=10)
    async with nodes(broker_config) as [node]:
        await node.broker.subscribe("c")
        first = await node.broker.publish("c", raw(1), history, key="k", window_seconds=60)
        again = await node.broker.publish("c", raw(2), history, key="k", window_seconds=60)
        assert not first.duplicate
        assert again == Published(first.position, duplicate=True)
        other = await node.broker.publish("c", raw(3), history, key="other", window_seconds=60)
        unkeyed = await node.broker.publish("c", raw(4), history)
        elsewhere = await node.broker.publish("d", raw(5), history, key="k", window_seconds=60)
        assert [other.position.offset, unkeyed.position.offset] == [2, 3]
        assert (elsewhere.position.offset, elsewhere.duplicate) == (1, False)
        await node.wait_for(3)
        delivered = [bytes(item.data) for item in node.delivered if item.channel == "c"]
        assert delivered == [b"1", b"3", b"4"]
        kept = await node.broker.read("c", after=None, epoch=None, limit=None)
        assert [bytes(item.data) for item in kept.publications] == [b"1", b"3", b"4"]


async def test_an_idempotency_key_is_forgotten_after_its_window(
    broker_config: BrokerConfig,
) -> None:
    async with nodes(broker_config) as [node]:
        await node.broker.subscribe("c")
        window = 0.05
        first = await node.broker.publish("c", raw(1), NO_HISTORY, key="k", window_seconds=window)
        while True:  # the window runs on the broker's clock: retry until it has passed
            later = await node.broker.publish(
                "c", raw(2), NO_HISTORY, key="k", window_seconds=window
            )
            if not later.duplicate:
                break
            assert later.position == first.position
            await anyio.sleep(window / 5)
        assert later.position.offset == 2


async def test_subscribe_fixes_the_epoch_that_later_publishes_use(
    broker_config: BrokerConfig,
) -> None:
    async with nodes(broker_config) as [node]:
        await node.broker.subscribe("c")
        start = await node.broker.read("c", after=None, epoch=None, limit=0)
        assert start.position.offset == 0
        assert start.position.epoch
        published = (await node.broker.publish("c", raw(1), NO_HISTORY)).position
        assert published.epoch == start.position.epoch


async def test_history_is_trimmed_by_size_and_read_after_an_offset(
    broker_config: BrokerConfig,
) -> None:
    history = History(size=3)
    async with nodes(broker_config) as [node]:
        await node.broker.subscribe("c")
        for index in range(1, 6):
            last = (await node.broker.publish("c", raw(index), history)).position
        newest = await node.broker.read("c", after=None, epoch=None, limit=None)
        assert [item.offset for item in newest.publications] == [3, 4, 5]
        assert newest.position == last
        two = await node.broker.read("c", after=None, epoch=None, limit=2)
        assert [bytes(item.data) for item in two.publications] == [b"4", b"5"]
        page = await node.broker.read("c", after=3, epoch=last.epoch, limit=None)
        assert (page.complete, [item.offset for item in page.publications]) == (True, [4, 5])
        limited = await node.broker.read("c", after=2, epoch=last.epoch, limit=1)
        assert (limited.complete, [item.offset for item in limited.publications]) == (True, [3])
        trimmed = await node.broker.read("c", after=1, epoch=last.epoch, limit=None)
        assert not trimmed.complete
        other_epoch = await node.broker.read("c", after=4, epoch="elsewhere", limit=None)
        assert (other_epoch.complete, other_epoch.publications) == (False, [])
        ahead = await node.broker.read("c", after=9, epoch=last.epoch, limit=None)
        assert not ahead.complete
        caught_up = await node.broker.read("c", after=5, epoch=last.epoch, limit=None)
        assert (caught_up.complete, caught_up.publications) == (True, [])


async def test_history_expires_by_age(broker_config: BrokerConfig) -> None:
    async with nodes(broker_config) as [node]:
        await node.broker.subscribe("c")
        await node.broker.publish("c", raw(1), History(size=10, ttl_seconds=0.05))
        await anyio.sleep(0.2)  # let the message age past its time to live
        last = (await node.broker.publish("c", raw(2), History(size=10, ttl_seconds=0.05))).position
        page = await node.broker.read("c", after=0, epoch=last.epoch, limit=None)
        assert [item.offset for item in page.publications] == [2]
        assert not page.complete


async def test_read_of_an_unknown_channel_is_empty(broker_config: BrokerConfig) -> None:
    async with nodes(broker_config) as [node]:
        page = await node.broker.read("nobody", after=None, epoch=None, limit=None)
        assert (page.position.offset, page.publications, page.complete) == (0, [], True)
        since = await node.broker.read("nobody", after=3, epoch="e", limit=None)
        assert not since.complete


async def test_an_idempotency_key_holds_across_nodes(redis_broker: BrokerConfig) -> None:
    async with nodes(redis_broker, 2) as [a, b]:
        first = await a.broker.publish("c", raw(1), NO_HISTORY, key="k", window_seconds=60)
        again = await b.broker.publish("c", raw(1), NO_HISTORY, key="k", window_seconds=60)
        assert again == Published(first.position, duplicate=True)


async def test_redis_nodes_share_channels_in_one_order(redis_broker: BrokerConfig) -> None:
    async with nodes(redis_broker, 3) as [a, b, c]:
        for node in (a, b, c):
            await node.broker.subscribe("c")
        async with anyio.create_task_group() as tg:
            # Two nodes publish at once; every node sees one order, that of the offsets.
            for node in (a, b):
                for index in range(50):
                    tg.start_soon(node.broker.publish, "c", raw(index), NO_HISTORY)
        for node in (a, b, c):
            await node.wait_for(100)
            assert node.offsets() == list(range(1, 101))
        assert [bytes(item.data) for item in a.delivered] == [
            bytes(item.data) for item in c.delivered
        ]


async def test_redis_subscription_per_channel_is_dropped_with_its_last_subscriber(
    redis_broker: BrokerConfig, redis_server: RedisServer
) -> None:
    async with (
        nodes(redis_broker) as [node],
        coredis.Redis.from_url(redis_server.url) as client,
    ):
        name = f"{redis_broker.prefix}:p:c"
        await node.broker.subscribe("c")
        await node.broker.subscribe("c")  # a second local subscriber
        assert await client.pubsub_numsub(name) == {name.encode(): 1}
        node.broker.unsubscribe("c")
        while (await client.pubsub_numsub(name))[name.encode()]:  # noqa: ASYNC110 - polls Redis
            await anyio.sleep(0.01)  # the node drops it in the background
        assert isinstance(node.broker, RedisBroker)
        assert node.broker.channel_count == 0


@pytest.mark.parametrize("size", [100, 0], ids=["kept", "not-kept"])
async def test_redis_messages_missed_by_a_broken_subscription_are_read_or_reported(
    redis_broker: BrokerConfig, redis_server: RedisServer, size: int
) -> None:
    history = History(size=size)
    async with (
        nodes(redis_broker, 2) as [publisher, listener],
        coredis.Redis.from_url(redis_server.url) as client,
    ):
        name = f"{redis_broker.prefix}:p:c"
        await listener.broker.subscribe("c")
        await publisher.broker.publish("c", raw(1), history)
        await listener.wait_for(1)
        # Break the listener's pub/sub connection, publish while it reconnects.
        await client.client_kill(type_=coredis.PureToken.PUBSUB)
        for index in range(2, 6):
            await publisher.broker.publish("c", raw(index), history)
        while not (await client.pubsub_numsub(name))[name.encode()]:  # noqa: ASYNC110 - polls Redis
            await anyio.sleep(0.01)  # coredis resubscribes after a backoff
        await publisher.broker.publish("c", raw(6), history)
        await listener.wait_for(6)
        lost = [offset for _, first, last in listener.missed for offset in range(first, last + 1)]
        assert sorted(listener.offsets() + lost) == list(range(1, 7))
        assert listener.offsets() == sorted(listener.offsets())
        if size:
            assert (listener.offsets(), lost) == ([1, 2, 3, 4, 5, 6], [])


# coredis 6.9 leaves the memory streams of a connection that never connected unclosed.
@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_a_publish_while_redis_is_down_is_refused_then_works_again(
    own_redis: RedisServer,
) -> None:
    own_redis.start()
    config = BrokerConfig(kind="redis", url=own_redis.url, timeout_seconds=1)
    async with nodes(config) as [node]:
        await node.broker.subscribe("c")
        await node.broker.publish("c", raw(1), NO_HISTORY)
        own_redis.stop()
        with pytest.raises(BrokerUnavailable) as refused:
            await node.broker.publish("c", raw(2), NO_HISTORY)
        assert refused.value.code == 301
        own_redis.start()
        with anyio.fail_after(15):
            while True:
                try:
                    position = (await node.broker.publish("c", raw(3), NO_HISTORY)).position
                except BrokerUnavailable:
                    await anyio.sleep(0.05)  # the client reconnects after a backoff
                else:
                    break
        # Redis kept nothing: the stream starts again, in a new epoch.
        assert position.offset == 1


@asynccontextmanager
async def broken_listener(
    broker: BrokerConfig, server: RedisServer, history: History
) -> AsyncIterator[tuple[Node, Node, coredis.Redis[bytes]]]:
    """A publisher and a listener on channel ``c``, offset 1 delivered, then the
    listener's pub/sub connection killed; checks every 50 ms."""
    config = msgspec.structs.replace(broker, check_seconds=0.05, timeout_seconds=0.5)
    async with (
        nodes(config, 2) as [publisher, listener],
        coredis.Redis.from_url(server.url) as client,
    ):
        await listener.broker.subscribe("c")
        await publisher.broker.publish("c", raw(1), history)
        await listener.wait_for(1)
        await client.client_kill(type_=coredis.PureToken.PUBSUB)
        yield publisher, listener, client


async def test_redis_messages_missed_before_a_quiet_spell_are_caught_up(
    redis_broker: BrokerConfig, redis_server: RedisServer
) -> None:
    history = History(size=100)
    async with broken_listener(redis_broker, redis_server, history) as (publisher, listener, _):
        for index in range(2, 5):
            await publisher.broker.publish("c", raw(index), history)
        # No later message shows the gap: the periodic check finds it.
        await listener.wait_for(4)
        assert (listener.offsets(), listener.missed) == ([1, 2, 3, 4], [])


@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_redis_readiness_follows_redis(own_redis: RedisServer) -> None:
    own_redis.start()
    config = BrokerConfig(kind="redis", url=own_redis.url, timeout_seconds=0.5, check_seconds=0.05)
    async with nodes(config) as [node]:
        broker = node.broker
        assert isinstance(broker, RedisBroker)
        await wait_ready(broker, True)
        assert broker.round_trip_seconds is not None
        own_redis.stop()
        await wait_ready(broker, False)
        own_redis.start()
        await wait_ready(broker, True)


async def test_redis_a_call_cut_short_by_the_timeout_leaves_no_reply_for_the_next(
    own_redis: RedisServer,
) -> None:
    # coredis 6.9 keeps a cancelled command in its connection's queue of requests, so
    # the late reply is matched to it; a cancelled pipeline drops its connection.
    own_redis.start()
    assert own_redis.process is not None
    config = BrokerConfig(kind="redis", url=own_redis.url, timeout_seconds=0.5)
    async with nodes(config) as [node]:
        for index in range(3):
            last = (await node.broker.publish("b", raw(index), NO_HISTORY)).position
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerUnavailable):
                await node.broker.publish("a", raw("late"), NO_HISTORY)
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        # Redis now runs the publish to "a" and answers it first: that reply is not this one.
        next_one = await node.broker.publish("b", raw(3), NO_HISTORY)
        assert next_one.position == Position(4, last.epoch)
        assert (await node.broker.read("a", after=0, epoch=None, limit=None)).position.offset == 1


async def test_presence_is_kept_and_events_reach_every_node(broker_config: BrokerConfig) -> None:
    count = 1 if broker_config.kind == "memory" else 2
    async with nodes(broker_config, count) as opened:
        first, last = opened[0], opened[-1]
        for node in opened:
            await node.broker.subscribe("room")
        alice, bob = ClientInfo("alice", user="u1"), ClientInfo("bob", None)
        await first.broker.add_presence("room", alice)
        await last.broker.add_presence("room", bob)
        for node in opened:
            found = await node.broker.presence("room")
            assert sorted(found, key=lambda info: info.client) == [alice, bob]
        first.broker.announce("room", "join", alice)
        for node in opened:
            while not node.events:
                node.arrived = anyio.Event()
                await node.arrived.wait()
            assert node.events == [("room", "join", "alice")]
        last.broker.remove_presence("room", bob)
        while len(await first.broker.presence("room")) != 1:  # noqa: ASYNC110 - removal is in the background with Redis
            await anyio.sleep(0.01)
        assert await first.broker.presence("room") == [alice]


async def test_presence_by_user_joins_with_the_first_client_and_leaves_with_the_last(
    broker_config: BrokerConfig,
) -> None:
    count = 1 if broker_config.kind == "memory" else 2
    async with nodes(broker_config, count) as opened:
        first, last = opened[0], opened[-1]
        for node in opened:
            await node.broker.subscribe("room")
        tab1, tab2 = ClientInfo("tab1", "ann"), ClientInfo("tab2", "ann")
        anonymous = ClientInfo("anon", None)
        # Two of ann's connections at once, on two nodes: one only is her first.
        firsts = [
            await first.broker.add_presence("room", tab1, by_user=True),
            await last.broker.add_presence("room", tab2, by_user=True),
        ]
        assert firsts == [True, False]
        assert await first.broker.add_presence("room", anonymous, by_user=True) is True
        # Her first to leave is not her last: no leave, nothing departed.
        first.broker.remove_presence("room", tab1, by_user=True)
        while len(await last.broker.presence("room")) != 2:  # noqa: ASYNC110 - removal is in the background with Redis
            await anyio.sleep(0.01)
        last.broker.remove_presence("room", tab2, by_user=True)
        for node in opened:
            while not node.events:
                node.arrived = anyio.Event()
                await node.arrived.wait()
            assert node.events == [("room", "leave", "tab2")]
        # Told on the node her last connection left from, and there only.
        while not last.departures:
            last.arrived = anyio.Event()
            await last.arrived.wait()
        assert last.departures == [("room", "tab2")]
        assert first.departures == [] or first is last
        assert await first.broker.presence("room") == [anonymous]


async def test_redis_announces_a_user_whose_last_entry_expired_with_its_node(
    redis_broker: BrokerConfig,
) -> None:
    """A user with a connection on a node that died and one on a live node leaves when
    the live one closes and the dead one's entry has expired, whichever comes last."""
    config = msgspec.structs.replace(redis_broker, presence_ttl_seconds=0.3)
    async with nodes(config) as [observer]:
        await observer.broker.subscribe("room")
        # A member of its own, as a watching client's node has: it keeps the channel's
        # members renewed.
        await observer.broker.add_presence("room", ClientInfo("w", "watcher"), by_user=True)
        async with nodes(config) as [doomed]:
            await doomed.broker.add_presence("room", ClientInfo("ghost", "ann"), by_user=True)
            assert isinstance(doomed.broker, RedisBroker)
            doomed.broker._present.clear()  # as if the node died: nothing refreshes "ghost"
        assert not await observer.broker.add_presence(
            "room", ClientInfo("live", "ann"), by_user=True
        )
        observer.broker.remove_presence("room", ClientInfo("live", "ann"), by_user=True)
        # Ann still had "ghost": no leave yet. Once it expires, a read prunes it and
        # announces her leave.
        while not observer.events:
            await observer.broker.presence("room")
            observer.arrived = anyio.Event()
            with anyio.move_on_after(0.1):
                await observer.arrived.wait()
        assert observer.events == [("room", "leave", "ghost")]


async def test_redis_presence_of_a_node_that_stopped_refreshing_expires(
    redis_broker: BrokerConfig,
) -> None:
    config = msgspec.structs.replace(redis_broker, presence_ttl_seconds=0.3)
    async with nodes(config) as [observer]:
        async with nodes(config) as [doomed]:
            await doomed.broker.add_presence("room", ClientInfo("ghost", None))
            assert [info.client for info in await observer.broker.presence("room")] == ["ghost"]
            assert isinstance(doomed.broker, RedisBroker)
            doomed.broker._present.clear()  # as if the node died: nothing refreshes "ghost"
        # (leaving the block stops the node without removing its entries)
        while await observer.broker.presence("room"):  # noqa: ASYNC110 - waits for the expiry
            await anyio.sleep(0.05)


async def test_redis_ignores_foreign_messages_on_its_channels(
    redis_broker: BrokerConfig, redis_server: RedisServer
) -> None:
    async with (
        nodes(redis_broker) as [node],
        coredis.Redis.from_url(redis_server.url) as client,
    ):
        await node.broker.subscribe("c")
        name = f"{redis_broker.prefix}:p:c"
        for garbage in (b"hello", b"!x{}", b"!j{not json", b"e:notanumber:1"):
            await client.publish(name, garbage)  # redis-cli, or a node of another version
        await node.broker.publish("c", raw(1), NO_HISTORY)
        await node.wait_for(1)
        assert node.offsets() == [1]


async def test_redis_a_stream_restarted_while_disconnected_is_announced_and_read(
    redis_broker: BrokerConfig, redis_server: RedisServer
) -> None:
    history = History(size=100)
    async with broken_listener(redis_broker, redis_server, history) as (
        publisher,
        listener,
        client,
    ):
        # Redis loses the stream (as in a restart without persistence), and the new
        # stream's only message is published while the listener is disconnected.
        await client.delete([f"{redis_broker.prefix}:m:c", f"{redis_broker.prefix}:s:c"])
        new = (await publisher.broker.publish("c", raw("new"), history)).position
        await listener.wait_for(2)
        assert listener.restarts == [("c", new.epoch)]
        assert [(item.offset, bytes(item.data)) for item in listener.delivered] == [
            (1, b"1"),
            (1, b'"new"'),
        ]


async def wait_channels(node: Node, expected: list[tuple[str, int]]) -> None:
    while await node.broker.channels("", "", 100) != expected:  # noqa: ASYNC110 - upkeep writes counts
        await anyio.sleep(0.02)


async def test_channel_counts_are_summed_over_nodes_and_paged(broker_config: BrokerConfig) -> None:
    count = 1 if broker_config.kind == "memory" else 2
    async with nodes(broker_config, count) as opened:
        first, last = opened[0], opened[-1]
        first.broker.count("b", 2)
        last.broker.count("a", 1)
        last.broker.count("b", 1)
        expected = [("a", 1), ("b", 1 if count == 1 else 3)]  # one node: its last count
        await wait_channels(first, expected)
        assert await first.broker.channels("", "", 1) == expected  # one more: there are more
        assert await first.broker.channels("", "a", 1) == expected[1:]
        assert await first.broker.channels("b", "", 10) == expected[1:]
        last.broker.count("a", 0)
        await wait_channels(first, expected[1:])


async def test_redis_channel_counts_lost_by_redis_are_written_again(
    redis_broker: BrokerConfig, redis_server: RedisServer
) -> None:
    broker = msgspec.structs.replace(redis_broker, presence_ttl_seconds=0.6)
    async with nodes(broker) as [node]:
        node.broker.count("kept", 4)
        await wait_channels(node, [("kept", 4)])
        client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
        async with client:
            async for key in client.scan_iter(match=f"{broker.prefix}:nc:*"):
                await client.delete([key])  # as if it expired while Redis was out of reach
        assert await node.broker.channels("", "", 100) == []
        with anyio.fail_after(5):
            await wait_channels(node, [("kept", 4)])


async def wait_command(node: Node, wanted: Callable[[Command], bool]) -> None:
    """Wait until *node* was handed a command that is *wanted*."""
    while not any(wanted(command) for command in node.commands):
        node.arrived = anyio.Event()
        await node.arrived.wait()


def lifted(user: str) -> Disconnect:
    """What lifting *user*'s ban looks like to a node that missed the lift itself."""
    return Disconnect(user=user, code=4003, reason="ban lifted", until=0.0)


async def wait_occupancy(node: Node, expected: list[tuple[str, bool]]) -> None:
    while node.occupancy_changes != expected:
        node.arrived = anyio.Event()
        await node.arrived.wait()


async def test_occupancy_follows_the_first_and_last_subscriber(
    broker_config: BrokerConfig,
) -> None:
    async with nodes(broker_config) as [node]:
        node.broker.count("c", 1)
        await wait_occupancy(node, [("c", True)])
        node.broker.count("c", 3)
        await wait_channels(node, [("c", 3)])
        node.broker.count("c", 0)
        await wait_occupancy(node, [("c", True), ("c", False)])


async def test_redis_occupancy_is_reported_once_in_the_cluster(
    redis_broker: BrokerConfig,
) -> None:
    async with nodes(redis_broker, 2) as [a, b]:
        a.broker.count("c", 1)
        await wait_occupancy(a, [("c", True)])
        b.broker.count("c", 1)
        await wait_channels(a, [("c", 2)])
        a.broker.count("c", 0)
        await wait_channels(a, [("c", 1)])
        b.broker.count("c", 0)
        await wait_occupancy(b, [("c", False)])
        assert a.occupancy_changes == [("c", True)]


async def test_redis_the_channels_of_a_node_that_died_are_vacated_once(
    redis_broker: BrokerConfig,
) -> None:
    broker = msgspec.structs.replace(redis_broker, presence_ttl_seconds=0.6)
    with anyio.fail_after(20):
        async with open_broker(broker, survivor := Node()) as survivor.broker:
            doomed = Node()
            async with open_broker(broker, doomed) as doomed.broker:
                doomed.broker.count("only-there", 1)
                doomed.broker.count("both", 1)
                await wait_channels(survivor, [("both", 1), ("only-there", 1)])
                survivor.broker.count("both", 1)
                await wait_channels(survivor, [("both", 2), ("only-there", 1)])
            # The doomed node stopped refreshing its counts without saying goodbye: a
            # sweep finds it dead, and its channel vacated.
            await wait_occupancy(survivor, [("only-there", False)])
            assert await survivor.broker.channels("", "", 10) == [("both", 1)]


async def test_redis_a_ban_pub_sub_missed_is_read_even_after_redis_lost_its_data(
    redis_broker: BrokerConfig, redis_server: RedisServer
) -> None:
    """A ban reaches a node through pub/sub, or at its next check from the bans kept in
    Redis; after Redis lost its data (a restart without persistence), a ban written then
    (pub/sub missed it) is still read, though it is the first written again."""
    ban = Disconnect(user="u1", code=4003, reason="r", until=time.time() + 60)
    async with nodes(redis_broker) as [node]:
        await node.broker.command(ban)
        await wait_command(node, lambda command: command == ban)
        client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
        async with client:
            async for key in client.scan_iter(match=f"{redis_broker.prefix}:*"):
                await client.delete([key])  # as a Redis restarted without its data
            missed = Disconnect(user="u2", code=4003, reason="r", until=time.time() + 60)
            # Written at once, as the first ban after the loss (a counter would be back at
            # a value the node saw), without the pub/sub message this node missed.
            await client.hset(f"{redis_broker.prefix}:bans", {"u2": msgspec.json.encode(missed)})
            await client.set(f"{redis_broker.prefix}:bans:v", "1")
        with anyio.fail_after(5):
            await wait_command(node, lambda command: command == missed)


async def test_redis_a_node_whose_counts_were_lost_writes_them_all_again(
    redis_broker: BrokerConfig, redis_server: RedisServer
) -> None:
    """Even when its first write after the loss carries a change of its own."""
    async with nodes(redis_broker) as [node]:
        for channel in ("a", "b", "c"):
            node.broker.count(channel, 1)
        await wait_channels(node, [("a", 1), ("b", 1), ("c", 1)])
        client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
        async with client:
            async for key in client.scan_iter(match=f"{redis_broker.prefix}:nc:*"):
                await client.delete([key])  # swept, or expired while Redis was away
        node.broker.count("d", 1)
        with anyio.fail_after(5):
            await wait_channels(node, [("a", 1), ("b", 1), ("c", 1), ("d", 1)])


async def test_redis_a_ban_lifted_while_a_node_was_away_is_lifted_there(
    redis_broker: BrokerConfig, redis_server: RedisServer
) -> None:
    ban = Disconnect(user="mallory", code=4003, reason="r", until=time.time() + 600)
    async with nodes(redis_broker) as [node]:
        await node.broker.command(ban)
        await wait_command(node, lambda command: command == ban)
        client: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
        async with client:  # another node lifts it; this one misses the pub/sub message
            await client.hdel(f"{redis_broker.prefix}:bans", ["mallory"])
            await client.set(f"{redis_broker.prefix}:bans:v", "another")
        with anyio.fail_after(5):
            await wait_command(node, lambda command: command == lifted("mallory"))
