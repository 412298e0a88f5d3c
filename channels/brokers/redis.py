"""The Redis broker: channels shared by every node connected to one Redis server.

Each channel has a meta hash, a stream of its kept messages, a pub/sub channel and
presence keys in Redis (`channels.brokers.redis_keys`).

A publish is one Lua script that numbers, keeps and publishes the message at once, so
every node receives a channel's messages in one order, the order of their offsets. A
node subscribes once per channel, whatever the number of its local subscribers, and
unsubscribes when the last one leaves.

Redis pub/sub delivers at most once: a node whose pub/sub connection broke misses what
was published meanwhile. The node notices when a message does not follow the last one
it delivered, reads the missing ones from the stream, and reports those no longer kept
as lost (the hub tells the subscribers with a ``gap``), so no loss goes unannounced.
Those decisions are made without I/O in `channels.brokers.ordering`; the Lua scripts
are in `channels.brokers.redis_scripts`.
"""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio
import coredis
import coredis.exceptions
import coredis.retry
import msgspec

from channels.brokers import redis_scripts
from channels.brokers.ordering import ChannelOrder, Check, Lost
from channels.brokers.redis_census import Census
from channels.brokers.redis_control import ControlChannel
from channels.brokers.redis_health import RETRIED, UNAVAILABLE, HealthCheck, describe
from channels.brokers.redis_keys import Keys
from channels.errors import BrokerUnavailable
from channels.publication import ClientInfo, HistoryPage, Position, Publication, Published

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from channels.brokers import Event, Receiver
    from channels.config import BrokerConfig, History
    from channels.control import Command

__all__ = ("RedisBroker", "open_redis_broker")

logger = logging.getLogger("clarion")

#: The longest pause between two attempts of background work while Redis is failing.
MAX_RETRY_DELAY_SECONDS: Final = 5.0

#: The shortest pause between two attempts to reconnect the pub/sub connection.
MIN_RECONNECT_DELAY_SECONDS: Final = 0.1

_EVENT_MARKS: dict[Event, bytes] = {"join": b"!j", "leave": b"!l"}
_EVENTS: dict[bytes, Event] = {b"j": "join", b"l": "leave"}
_client_info = msgspec.json.Decoder(ClientInfo)
_encoder = msgspec.json.Encoder()


class RedisBroker:
    """A broker that shares channels between the nodes connected to one Redis.

    Open one with `open_redis_broker`. Every call that reaches Redis raises
    `BrokerUnavailable` when Redis is down or takes longer than *timeout_seconds*.
    """

    def __init__(
        self,
        client: coredis.Redis[bytes],
        config: BrokerConfig,
        receiver: Receiver,
    ) -> None:
        self._client = client
        self._pubsub: coredis.patterns.pubsub.PubSub[bytes] | None = None
        self._connected = anyio.Event()
        self._keys = Keys(config.prefix)
        self._idle_ms = max(1, round(config.stream_idle_seconds * 1000))
        self._refresh_seconds = config.stream_idle_seconds / 3
        self._timeout_seconds = config.timeout_seconds
        self._check_seconds = config.check_seconds
        self._health = HealthCheck(
            client,
            self._keys.node,
            timeout_seconds=config.timeout_seconds,
            check_seconds=config.check_seconds,
        )
        self._publish_script = client.register_script(redis_scripts.PUBLISH)
        self._read_script = client.register_script(redis_scripts.READ)
        self._presence_add = client.register_script(redis_scripts.PRESENCE_ADD)
        self._presence_read = client.register_script(redis_scripts.PRESENCE_READ)
        self._presence_remove = client.register_script(redis_scripts.PRESENCE_REMOVE)
        self._presence_ttl_ms = max(1, round(config.presence_ttl_seconds * 1000))
        self._presence_refresh_seconds = config.presence_ttl_seconds / 3
        self._present: dict[str, dict[str, ClientInfo]] = {}
        """This node's clients in presence, per channel: refreshed, so they stay."""
        self._by_user: set[str] = set()
        """The channels whose members are users (see `add_presence`), with entries here."""
        self._to_forget: list[tuple[str, ClientInfo, bool, bool]] = []
        """Presence entries to remove: channel, client, whether by user and whether
        quietly (see `remove_presence`)."""
        self._to_announce: list[tuple[str, bytes]] = []
        self._receiver = receiver
        self._control = ControlChannel(client, self._keys, receiver, config.timeout_seconds)
        self._census = Census(
            client,
            self._keys,
            ttl_seconds=config.presence_ttl_seconds,
            timeout=config.timeout_seconds,
        )
        self._listening: dict[str, ChannelOrder] = {}
        self._changing = anyio.Lock()
        self._to_repair: set[str] = set()
        self._to_leave: set[str] = set()
        self._work = anyio.Event()

    @property
    def ready(self) -> bool:
        """Whether the last check reached Redis both ways within ``timeout_seconds``."""
        return self._health.ready

    @property
    def round_trip_seconds(self) -> float | None:
        """How long the last check took: a publish, back through this node's pub/sub."""
        return self._health.round_trip_seconds

    @property
    def channel_count(self) -> int:
        """How many channels this node is subscribed to in Redis."""
        return len(self._listening)

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        history: History,
        *,
        key: str | None = None,
        window_seconds: float = 0.0,
    ) -> Published:
        keys = self._keys.stream(channel)
        if key is not None:
            keys.append(self._keys.idempotency(channel, key))
        with self._calling("publish"):
            reply: Any = await self._publish_script(
                keys=keys,
                args=[
                    self._keys.pubsub(channel),
                    bytes(data),
                    secrets.token_hex(6),
                    history.size,
                    round(history.ttl_seconds * 1000),
                    self._idle_ms,
                    max(1, round(window_seconds * 1000)),
                ],
            )
        top, epoch, duplicate = reply
        return Published(Position(int(top), epoch.decode()), duplicate=bool(duplicate))

    async def read(
        self, channel: str, *, after: int | None, epoch: str | None, limit: int | None
    ) -> HistoryPage:
        position, publications = await self._read(channel, after=after, limit=limit, start="")
        if not position.epoch:
            return HistoryPage(position, [], complete=after is None)
        if after is None:
            return HistoryPage(position, publications, complete=True)
        if (epoch is not None and epoch != position.epoch) or after > position.offset:
            return HistoryPage(position, [], complete=False)
        oldest = publications[0].offset if publications else position.offset + 1
        return HistoryPage(position, publications, complete=oldest <= after + 1)

    async def subscribe(self, channel: str) -> None:
        async with self._changing:
            listening = self._listening.get(channel)
            if listening is not None:
                listening.wanted = True
                return
            listening = self._listening[channel] = ChannelOrder()
            try:
                with anyio.fail_after(self._timeout_seconds):
                    await self._connected.wait()
                    await self._subscriber.subscribe(self._keys.pubsub(channel))
                position, _ = await self._read(
                    channel, after=None, limit=0, start=secrets.token_hex(6)
                )
            except BaseException as exc:
                # Redis may hold the subscription all the same: have it dropped.
                del self._listening[channel]
                self._leave_soon(channel)
                if isinstance(exc, UNAVAILABLE):
                    raise BrokerUnavailable("subscribe", describe(exc)) from exc
                raise
            for message in listening.start(position.epoch.encode(), position.offset):
                self._receive(channel, listening, message)

    def unsubscribe(self, channel: str) -> None:
        listening = self._listening.get(channel)
        if listening is not None:
            listening.wanted = False
            self._leave_soon(channel)

    async def add_presence(
        self, channel: str, client: ClientInfo, *, by_user: bool = False
    ) -> bool:
        if by_user:
            self._by_user.add(channel)
        try:
            with self._calling("presence"):
                first: Any = await self._presence_add(
                    keys=self._keys.presence(channel), args=self._entry(channel, client, "add")
                )
        except BaseException:
            # The script may have run: its entry is counted out, quietly (re-raised).
            self._to_forget.append((channel, client, by_user, True))
            self._work.set()
            raise
        # Renewed from now on; not before the entry is written, or a renewal would find
        # it missing and write it as one Redis had lost.
        self._present.setdefault(channel, {})[client.client] = client
        return bool(first)

    def _entry(self, channel: str, client: ClientInfo, mode: str) -> list[str | int | bytes]:
        """The arguments of PRESENCE_ADD for *client*'s entry."""
        user = (client.user or "") if channel in self._by_user else ""
        info = _encoder.encode(client)
        return [client.client, info, self._presence_ttl_ms, user, self._keys.pubsub(channel), mode]

    def remove_presence(
        self, channel: str, client: ClientInfo, *, by_user: bool = False, quiet: bool = False
    ) -> None:
        clients = self._present.get(channel)
        if clients is not None and clients.pop(client.client, None) is not None:
            if not clients:
                del self._present[channel]
                self._by_user.discard(channel)
            self._to_forget.append((channel, client, by_user, quiet))
            self._work.set()

    async def presence(self, channel: str) -> list[ClientInfo]:
        with self._calling("presence"):
            found: Any = await self._presence_read(
                keys=self._keys.presence(channel), args=["", "", "", "", self._keys.pubsub(channel)]
            )
        return [_client_info.decode(info) for info in found]

    def announce(self, channel: str, event: Event, client: ClientInfo) -> None:
        self._to_announce.append((channel, _EVENT_MARKS[event] + _encoder.encode(client)))
        self._work.set()

    def count(self, channel: str, subscribers: int) -> None:
        self._census.count(channel, subscribers)
        self._work.set()

    async def channels(self, prefix: str, after: str, limit: int) -> list[tuple[str, int]]:
        with self._calling("channels"):
            return await self._census.channels(prefix, after, limit)

    async def command(self, command: Command) -> None:
        with self._calling("command"):
            await self._control.send(command)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, receive from Redis and keep this node's subscriptions right.

        Ready at once: while Redis cannot be reached, the pub/sub connection keeps
        retrying (exponential backoff capped at ``check_seconds``) and the broker is not
        `ready`. Runs until cancelled.
        """
        task_status.started()
        # Reconnect for good: coredis's default gives up on the third slow resubscribe,
        # which would end the broker. coredis never resets the attempt count, so after a
        # few outages every reconnect waits about the cap: keep it near check_seconds,
        # or readiness would lag Redis's recovery by the whole cap.
        cap = min(MAX_RETRY_DELAY_SECONDS, self._check_seconds)
        retry = coredis.retry.ExponentialBackoffRetryPolicy(
            (coredis.exceptions.ConnectionError, TimeoutError),
            retries=None,
            base_delay=min(MIN_RECONNECT_DELAY_SECONDS, cap),
            max_delay=cap,
            jitter=True,
        )
        async with self._client.pubsub(
            ignore_subscribe_messages=False, retry_policy=retry
        ) as self._pubsub:
            self._connected.set()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._listen)
                tg.start_soon(self._maintain)
                tg.start_soon(self._health.run, self._pubsub, self._when_ready)

    @property
    def _subscriber(self) -> coredis.patterns.pubsub.PubSub[bytes]:
        if self._pubsub is None:
            raise RuntimeError("the pub/sub connection is not open yet")
        return self._pubsub

    @contextmanager
    def _calling(self, operation: str) -> Iterator[None]:
        """Bound a call to Redis by ``timeout_seconds``.

        Raises:
            BrokerUnavailable: if Redis is down, restarting, or slower than that.
        """
        try:
            with anyio.fail_after(self._timeout_seconds):
                yield
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(operation, describe(exc)) from exc

    async def _read(
        self, channel: str, *, after: int | None, limit: int | None, start: str
    ) -> tuple[Position, list[Publication]]:
        """Run the read script; with *start*, a missing stream begins with that epoch."""
        with self._calling("read"):
            reply: Any = await self._read_script(
                keys=self._keys.stream(channel),
                args=[
                    -1 if after is None else after,
                    -1 if limit is None else limit,
                    start,
                    self._idle_ms,
                ],
            )
        epoch, top, found = reply
        publications = [
            Publication(
                channel, int(found[index].partition(b"-")[0]), msgspec.Raw(found[index + 1])
            )
            for index in range(0, len(found), 2)
        ]
        return Position(int(top), epoch.decode()), publications

    def _receive(self, channel: str, listening: ChannelOrder, message: bytes) -> None:
        """Deliver one pub/sub *message* in order, or hold it until the gap is filled.

        Raises:
            ValueError: for a message that is not ``EPOCH:OFFSET:DATA``.
        """
        step = listening.receive(message)
        if step.restarted is not None:
            self._announce_restart(channel, step.restarted)
        if step.repair:
            self._to_repair.add(channel)
            self._work.set()
        elif step.deliver is not None:
            offset, data = step.deliver
            self._receiver.deliver(Publication(channel, offset, msgspec.Raw(data)))

    def _announce_restart(self, channel: str, epoch: bytes) -> None:
        """Tell the hub that *channel* follows a new stream: Redis lost the old one
        (restarted without persistence, or it idled out), so offsets start again at 1."""
        logger.warning("channel %r restarted with a new epoch in Redis", channel)
        self._receiver.restarted(channel, epoch.decode())

    def _leave_soon(self, channel: str) -> None:
        self._to_leave.add(channel)
        self._work.set()

    async def _listen(self) -> None:
        while True:
            message: Any = await self._subscriber.get_message()
            if message is None:
                continue
            if message["channel"] == self._keys.node:
                if message["type"] == "message":
                    self._health.echo(message["data"])
                elif message["type"] == "subscribe":
                    self._health.subscribed()
                continue
            if message["type"] != "message":
                continue
            if message["channel"] == self._keys.control:
                self._control.receive(message["data"])
                continue
            try:
                channel = self._keys.channel_of(message["channel"])
                data: bytes = message["data"]
                if data[:1] == b"!":  # a presence event, outside the numbered stream
                    event = _EVENTS[data[1:2]]
                    self._receiver.event(channel, event, _client_info.decode(data[2:]))
                    continue
                listening = self._listening.get(channel)
                if listening is not None:
                    self._receive(channel, listening, data)
            except (ValueError, KeyError, msgspec.MsgspecError):
                # Someone else published on our pub/sub channel (redis-cli, a node of
                # another version): not ours to deliver, and no reason to stop.
                logger.warning("ignored a malformed message on %r", message["channel"])

    async def _maintain(self) -> None:
        """Fill gaps, drop subscriptions no longer wanted, keep streams and presence alive."""
        failures = 0
        next_refresh = next_presence = anyio.current_time()
        while True:
            with anyio.move_on_after(
                max(0.0, min(next_refresh, next_presence) - anyio.current_time())
            ):
                await self._work.wait()
            self._work = anyio.Event()
            try:
                await self._send_announcements()
                await self._forget_presence()
                if anyio.current_time() >= next_presence:
                    await self._refresh_presence()
                    await self._write_counts()
                    for channel in await self._census.sweep():
                        self._receiver.occupancy(channel, False)
                    next_presence = anyio.current_time() + self._presence_refresh_seconds
                elif self._census.pending:
                    await self._write_counts()
                while self._to_repair:
                    channel = self._to_repair.pop()
                    try:
                        await self._repair(channel)
                    except BaseException:
                        self._to_repair.add(channel)  # try again
                        raise
                async with self._changing:
                    for channel in list(self._to_leave):
                        await self._leave(channel)
                        self._to_leave.discard(channel)
                if anyio.current_time() >= next_refresh:
                    await self._refresh()
                    next_refresh = anyio.current_time() + self._refresh_seconds
                failures = 0
            except RETRIED as exc:
                self._to_announce.clear()  # best effort: stale joins help nobody later
                failures += 1
                # Capped before the power: a long outage must not overflow a float.
                delay = min(MAX_RETRY_DELAY_SECONDS, 0.05 * 2 ** min(failures, 16))
                logger.warning("Redis upkeep failed, retrying in %.2fs: %s", delay, exc)
                await anyio.sleep(delay)
                self._work.set()

    async def write_last_counts(self) -> None:
        """Write the counts that changed (a drain's: its channels vacated here), within
        ``timeout_seconds`` and whatever Redis says, so that a node that stops reports
        the channels it was the last to hold."""
        with anyio.move_on_after(self._timeout_seconds, shield=True):
            try:
                await self._write_counts()
            except RETRIED as exc:
                logger.warning("Redis: the last channel counts were not written: %s", exc)

    async def _write_counts(self) -> None:
        for channel, occupied in await self._census.write():
            self._receiver.occupancy(channel, occupied)

    async def _repair(self, channel: str) -> None:
        """Deliver what *channel* missed before its first held message, or report it lost."""
        listening = self._listening.get(channel)
        wanted = None if listening is None else listening.repair_range()
        if listening is None or wanted is None:
            return
        after, limit = wanted
        position, publications = await self._read(channel, after=after, limit=limit, start="")
        found, held = listening.repaired(position.epoch.encode(), publications)
        for item in found:
            if isinstance(item, Lost):
                self._receiver.lost(channel, item.first, item.last)
            else:
                self._receiver.deliver(item)
        for message in held:
            self._receive(channel, listening, message)

    async def _leave(self, channel: str) -> None:
        listening = self._listening.get(channel)
        if listening is not None and listening.wanted:
            return  # subscribed again meanwhile
        self._listening.pop(channel, None)
        with anyio.fail_after(self._timeout_seconds):
            await self._subscriber.unsubscribe(self._keys.pubsub(channel))

    async def _send_announcements(self) -> None:
        while self._to_announce:
            batch, self._to_announce = self._to_announce, []
            with anyio.fail_after(self._timeout_seconds):
                async with self._client.pipeline(transaction=False) as pipeline:
                    for channel, payload in batch:
                        pipeline.publish(self._keys.pubsub(channel), payload)

    async def _forget_presence(self) -> None:
        while self._to_forget:
            batch = self._to_forget[:]
            # Subscribed again meanwhile: kept.
            gone = [item for item in batch if item[1].client not in self._present.get(item[0], {})]
            with anyio.fail_after(self._timeout_seconds):
                async with self._client.pipeline(transaction=False) as pipeline:
                    for channel, client, by_user, _ in gone:
                        if not by_user:
                            hash_key, expiry_key, _ = self._keys.presence(channel)
                            pipeline.hdel(hash_key, [client.client])
                            pipeline.zrem(expiry_key, [client.client])
                for channel, client, by_user, quiet in gone:
                    if by_user and await self._forget_member(channel, client, quiet=quiet):
                        self._receiver.departed(channel, client)
            del self._to_forget[: len(batch)]

    async def _forget_member(self, channel: str, client: ClientInfo, *, quiet: bool) -> bool:
        """Forget *client*'s entry; announce its leave if its user has no other entry
        left (unless *quiet*). Returns whether it did."""
        leave = b"" if quiet else _EVENT_MARKS["leave"] + _encoder.encode(client)
        announced: Any = await self._presence_remove(
            keys=self._keys.presence(channel),
            args=[client.client, client.user or "", "", "", self._keys.pubsub(channel), leave],
        )
        return bool(announced)

    async def _refresh_presence(self) -> None:
        """Renew this node's presence entries before they expire."""
        entries = [
            (channel, client)
            for channel, clients in self._present.items()
            for client in clients.values()
        ]
        if not entries:
            return
        with anyio.fail_after(self._timeout_seconds):
            async with self._client.pipeline(transaction=False) as pipeline:
                for channel, client in entries:
                    self._presence_add(
                        keys=self._keys.presence(channel),
                        args=self._entry(channel, client, "refresh"),
                        client=pipeline,
                    )

    async def _refresh(self) -> None:
        """Keep the epoch of every channel with subscribers here from idling out."""
        channels = list(self._listening)
        if not channels:
            return
        with anyio.fail_after(self._timeout_seconds):
            async with self._client.pipeline(transaction=False) as pipeline:
                for channel in channels:
                    pipeline.pexpire(self._keys.meta(channel), self._idle_ms)

    async def _when_ready(self) -> None:
        """After each check that found Redis ready: catch up on commands and channels."""
        await self._control.catch_up(self._subscriber)
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Repair every channel whose stream went further than what was delivered here.

        This finds what pub/sub lost when no later message of the channel came to show
        the gap (the connection broke after the channel's last publish).
        """
        channels = [name for name, listening in self._listening.items() if listening.held is None]
        if not channels:
            return
        with anyio.fail_after(self._timeout_seconds):
            async with self._client.pipeline(transaction=False) as pipeline:
                requests = [
                    pipeline.hmget(self._keys.meta(channel), ["epoch", "top"])
                    for channel in channels
                ]
            replies = [await request for request in requests]
        for channel, (epoch, top) in zip(channels, replies, strict=True):
            listening = self._listening.get(channel)
            if listening is None or epoch is None or top is None:
                continue
            verdict = listening.check(epoch, int(top))
            if verdict is Check.RESTARTED:
                # A new stream whose messages all came while pub/sub was down: nothing
                # arrived to show the restart.
                self._announce_restart(channel, epoch)
            elif verdict is Check.REPAIR:
                self._to_repair.add(channel)
                self._work.set()


@asynccontextmanager
async def open_redis_broker(config: BrokerConfig, receiver: Receiver) -> AsyncIterator[RedisBroker]:
    """Connect to Redis and run a `RedisBroker` for the duration of the block.

    The pub/sub connection reconnects by itself with capped exponential backoff and
    resubscribes; messages published meanwhile are read from the streams or reported
    lost (see the module docstring).
    """
    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        config.redis_url, decode_responses=False, connect_timeout=config.timeout_seconds
    )
    async with client:
        # coredis's pub/sub keeps reconnecting while Redis is down, and then does not
        # end when its block is left: one scope around it all cancels it too.
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                broker = RedisBroker(client, config, receiver)
                await tg.start(broker.run)
                try:
                    yield broker
                finally:
                    await broker.write_last_counts()
                    scope.cancel()
