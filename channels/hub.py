"""The local fan-out: which outbox listens to which channel, publish, history, recovery."""

from __future__ import annotations

import heapq
import secrets
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from channels.activity import Activity
from channels.brokers import open_broker
from channels.connection import Connection
from channels.control import Bans, Disconnect, Ending, Unsubscribe
from channels.errors import (
    AlreadySubscribed,
    ChannelsError,
    MessageTooLarge,
    NotSubscribed,
    PermissionDenied,
    PresenceDisabled,
    ServerClosing,
    TooManyChannels,
    TooManySubscriptions,
    UnsubscribedByServer,
)
from channels.local import Joining, LocalChannel
from channels.outbox import Delivery, Outbox
from channels.publication import ClientInfo
from channels.rules import Grant, RuleBook
from channels.sender import Flusher, Sender
from channels.statistics import ChannelCount, ChannelsPage, ChannelStatistics, HubStatistics
from channels.traffic import Traffic

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from channels.activity import ActivityName, Observer
    from channels.brokers import Broker, Event
    from channels.config import ChannelRule, Config, SlowConsumerPolicy
    from channels.control import Command
    from channels.encoding import Encoding
    from channels.publication import HistoryPage, Position, Publication, Published
    from channels.rules import Action, NameKind
    from channels.sender import FrameWriter, Transport

__all__ = ("Hub", "Subscribed", "UNTRUSTED_LIST_READS", "open_hub")

#: How many pages of the broker's one untrusted `Hub.channels` call reads at most.
UNTRUSTED_LIST_READS: Final = 10


_ANONYMOUS = Grant()


class Subscribed(msgspec.Struct, frozen=True):
    """The outcome of a subscribe: where the client joined the stream.

    ``recovered`` is None for a subscribe without ``since``; otherwise it tells whether
    every missed message was replayed.
    """

    channel: str
    position: Position
    recovered: bool | None
    presence: list[ClientInfo] | None = None
    """The channel's clients as the subscription started (itself included), when it was
    asked for."""
    replayed: int = 0
    """How many kept messages come first (recovered ones, or the *last* asked for)."""


class Hub:
    """Fan publications out to local subscribers' outboxes.

    A publication is encoded once by *encoding* and the same bytes are offered to every
    outbox; offering never waits, so a slow subscriber never delays the others.
    Open one with `open_hub`.
    """

    def __init__(
        self,
        config: Config,
        encoding: Encoding,
        *,
        kinds: Sequence[NameKind] = (),
        sender_of: Callable[[msgspec.Raw], str | None] | None = None,
    ) -> None:
        server = config.server
        self._sender_of = sender_of
        """Finds in a message's data the client that must not receive it, if any (a
        wire's own convention: see `open_hub`)."""
        self._kinds = tuple(kinds)
        """What a wire protocol makes a channel by its name (see `channels.rules.NameKind`)."""
        self.flusher = Flusher(
            server.flush_delay_seconds,
            server.flush_batch_connections,
            server.writer_linger_seconds,
        )
        """Sends the outboxes (see `channels.sender`); run by `open_hub`."""
        self._rules = self._rule_book(config)
        self._limits = server
        """The hub's limits, as configured (``server:``)."""
        self._broker: Broker | None = None
        self._encoding = encoding
        self._clients: dict[Outbox, ClientInfo] = {}
        self._grants: dict[Outbox, Grant] = {}
        """Only for connections with a user: anonymous ones hold no entry."""
        self._users: dict[str, set[Outbox]] = {}
        """The connections of each user (anonymous ones are in none)."""
        self.bans = Bans()
        """The users kept out by a disconnect with ``until``, on every node."""
        self.observer: Observer | None = None
        """Hears of what happens here (`channels.activity`), as webhooks do."""
        self._channels: dict[str, LocalChannel] = {}
        self._subscriptions: dict[Outbox, list[str]] = {}
        self._published = 0
        self._accepted = 0
        self.traffic = Traffic()
        """What this node's outboxes handed out to be sent (see `channels.traffic`)."""
        self._dropped_by_gone = 0
        self._slow_consumers_gone = 0
        self.closing = False
        self._no_connections: anyio.Event | None = None

    def _rule_book(self, config: Config) -> RuleBook:
        return RuleBook(config, kinds=self._kinds)

    def run_on(self, broker: Broker) -> None:
        """Carry this hub's channels on *broker* (`open_hub` does it).

        The broker is not readable from outside: every read of a channel goes through
        the hub's access decision.
        """
        self._broker = broker

    @property
    def _carrier(self) -> Broker:
        if self._broker is None:
            raise RuntimeError("the hub has no broker: open one with open_hub")
        return self._broker

    @property
    def connection_count(self) -> int:
        """How many connections are attached."""
        return len(self._subscriptions)

    def not_ready_reason(self) -> str | None:
        """Why the node should get no new clients now (None when it is ready)."""
        if self.closing:
            return "draining"
        if not self._carrier.ready:
            return "broker unavailable"
        return None

    def connect(
        self,
        transport: Transport,
        *,
        on_end: Callable[[], None],
        client: ClientInfo | None = None,
        grant: Grant | None = None,
        frames: FrameWriter | None = None,
        encoding: Encoding | None = None,
    ) -> Connection:
        """Attach a connection, for a ``with`` block: the one way in.

        The connection gets an outbox (``server.outbox_messages`` and
        ``server.frame_max_bytes`` as they are now) and a sender that writes it to
        *frames* or *transport* (see `channels.sender.Sender`). Leaving the block stops
        the sender and leaves every channel; it never blocks. (A class rather than a
        generator-based context manager: an idle connection should not hold a frame.)

        Args:
            transport: where the connection's frames go when a send may have to wait.
            on_end: called once when the connection should end: it is a slow consumer
                (`Connection.failed`), its transport broke, or the hub closed it and it
                sent everything it held (`Connection.closed`).
            client: who it is in presence and events; a new client id by default.
            grant: what its token allows (see `channels.rules.Grant`); anonymous by
                default.
            frames: its socket, when frames can be written without waiting.
            encoding: its wire's encoding, when it is not the hub's (another door's).

        Raises:
            ServerClosing: if the hub is closing.
        """
        capacity, frame_max_bytes = self._limits.outbox_messages, self._limits.frame_max_bytes
        encoding = self._encoding if encoding is None else encoding
        outbox = Outbox(capacity, frame_max_bytes, encoding, on_fail=on_end, traffic=self.traffic)
        client = self.attach(outbox, client, grant)
        sender = Sender(outbox, transport, self.flusher, on_end, frames)
        return Connection(self, outbox, sender, client)

    def attach(
        self, outbox: Outbox, client: ClientInfo | None = None, grant: Grant | None = None
    ) -> ClientInfo:
        """Register a connection's outbox; return who it is in presence and events.

        `connect` does this, and `detach`, for a connection; a caller that sends the
        outbox itself (the engine's tests) may attach one directly.

        Args:
            outbox: the connection's outbox.
            client: its identity; by default a new client id, with no user.
            grant: what its token allows (see `channels.rules.Grant`); anonymous by default.

        Raises:
            ServerClosing: if the hub is closing.
        """
        if self.closing:
            raise ServerClosing
        # A list rather than a set: a connection has a few channels (at most
        # server.max_subscriptions), and a set costs an idle connection 216 bytes where a
        # list of one channel costs 64.
        self._subscriptions[outbox] = []
        if client is None:
            client = ClientInfo(secrets.token_hex(8), None)
        self._clients[outbox] = client
        if grant is not None and grant.user is not None:
            self._grants[outbox] = grant
        if client.user is not None:
            self._users.setdefault(client.user, set()).add(outbox)
            ban = self.bans.of(client.user)
            if ban is not None:
                # Banned while its handshake was being accepted: it ends at once, as the
                # user's other connections did.
                outbox.close(Ending(ban.code, ban.reason))
        return client

    def sign_in(self, outbox: Outbox, user: str) -> ClientInfo:
        """Make *outbox*'s connection *user*'s from now on; return who it is now.

        For a wire whose connections authenticate after they open (a Pusher sign-in):
        the server API finds it among the user's connections, its grant is the user's,
        and a ban of the user closes it at once. Its presence in channels it is already
        in does not change.
        """
        client = self._clients[outbox]
        if client.user is not None:
            self._forget_user(outbox, client.user)
        client = self._clients[outbox] = msgspec.structs.replace(client, user=user)
        self._grants[outbox] = Grant(user)
        self._users.setdefault(user, set()).add(outbox)
        ban = self.bans.of(user)
        if ban is not None:
            outbox.close(Ending(ban.code, ban.reason))
        return client

    def _forget_user(self, outbox: Outbox, user: str) -> None:
        outboxes = self._users[user]
        outboxes.discard(outbox)
        if not outboxes:
            del self._users[user]

    def detach(self, outbox: Outbox) -> None:
        """Forget *outbox* and all its subscriptions. Never blocks; idempotent."""
        channels = self._subscriptions.pop(outbox, None)
        if channels is None:
            return
        for channel in channels:
            self._leave(outbox, channel)
        client = self._clients.pop(outbox)
        self._grants.pop(outbox, None)
        if client.user is not None:
            self._forget_user(outbox, client.user)
        self._dropped_by_gone += outbox.dropped
        self._slow_consumers_gone += outbox.failed
        if not self._subscriptions and self._no_connections is not None:
            self._no_connections.set()
            self._no_connections = None

    async def wait_no_connections(self) -> None:
        """Wait until every attached outbox has been detached. Any number may wait."""
        while self._subscriptions:
            if self._no_connections is None:
                self._no_connections = anyio.Event()
            await self._no_connections.wait()

    def close(self) -> None:
        """Refuse new connections and operations, and close every outbox.

        Each writer then sends what its outbox holds and ends its connection.
        """
        self.closing = True
        for outbox in self._subscriptions:
            outbox.close()

    async def subscribe(
        self,
        outbox: Outbox,
        channel: str,
        *,
        since: Position | None,
        on_subscribed: Callable[[Subscribed], None],
        private_ok: bool = False,
        member: ClientInfo | None = None,
        read_presence: bool = False,
        last: int = 0,
    ) -> None:
        """Subscribe *outbox* to *channel*, replaying what it missed after *since*.

        *on_subscribed* is called once the starting position is known and before any
        message of the channel is offered, so that the reply precedes them. Then the
        missed messages (when they can all be recovered) and the live ones follow, each
        exactly once and in offset order. *member* is who the connection is in this
        channel's presence and events, when not who it is everywhere (a Pusher presence
        channel's user, authorized for that channel). With *read_presence*, the
        channel's clients are read once this one is among them, for `Subscribed`.

        Raises:
            InvalidChannelName, ChannelNotFound: for a bad channel.
            PermissionDenied: if the connection may not subscribe (the rule's
                ``subscribe`` access, or ``private`` without *private_ok*).
            AlreadySubscribed: if *outbox* is subscribed to *channel*.
            TooManySubscriptions: if *outbox* holds ``server.max_subscriptions`` already.
            ServerClosing: if the hub is closing.
        """
        if self.closing:
            raise ServerClosing
        rules = self._rules
        rule = self._resolve(channel, "subscribe", outbox, private_ok=private_ok)
        channels = self._subscriptions[outbox]
        if channel in channels:
            raise AlreadySubscribed(channel)
        if len(channels) >= self._limits.max_subscriptions:
            raise TooManySubscriptions(self._limits.max_subscriptions)
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = LocalChannel(
                self._rules.policy(rule),
                presence=rule.presence,
                join_leave=rule.join_leave,
                by_user=self._rules.members_by_user(channel),
            )
        channels.append(channel)
        if member is not None:
            state.members[outbox] = member
        client = self._clients[outbox] if member is None else member
        joining = state.joining[outbox] = Joining()
        try:
            await self._carrier.subscribe(channel)
            if since is None:
                page = await self._carrier.read(channel, after=None, epoch=None, limit=last)
            else:
                page = await self._carrier.read(
                    channel,
                    after=since.offset,
                    epoch=since.epoch,
                    limit=self._limits.recovery_limit,
                )
            members = None
            first = True  # of its user: by user, only the first joins (see LocalChannel)
            if state.presence:
                first = await self._carrier.add_presence(channel, client, by_user=state.by_user)
                first = first or not state.by_user
                if read_presence:
                    members = await self._carrier.presence(channel)
            if self._rules is not rules:  # a reload came meanwhile: its rules decide
                self._resolve(channel, "subscribe", outbox, private_ok=private_ok)
        except BaseException:
            _drop(channels, channel)
            self._leave(outbox, channel)
            raise
        del state.joining[outbox]
        state.subscribers[outbox] = None
        self._carrier.count(channel, len(state.subscribers))
        if state.presence and first and self.observer is not None:
            joined = Activity(name="member_joined", channel=channel, client=client)
            self.observer(joined)
        start = page.position.offset
        if start > state.last_offset:
            state.skip_until[outbox] = start
        recovered = None
        if since is not None:
            missed = start - since.offset
            recovered = page.complete and missed <= self._limits.recovery_limit
        replay = page.publications if recovered or since is None else []
        on_subscribed(Subscribed(channel, page.position, recovered, members, len(replay)))
        if last and not replay and self.observer is not None:
            self.observer(Activity(name="cache_miss", channel=channel))
        for publication in replay:
            outbox.offer(self._delivery(publication, state.policy))
        # Held deliveries up to the start position were in the page, or came before it.
        if joining.dropped is not None and joining.dropped[1] > start:
            outbox.record_gap(channel, max(joining.dropped[0], start + 1), joining.dropped[1])
        for delivery in joining.deliveries:
            if delivery.offset > start:
                outbox.offer(delivery)
        if state.join_leave and first:
            self._carrier.announce(channel, "join", client)

    def reconfigure(self, config: Config) -> int:
        """Apply *config*'s channel rules and hub limits from now on; return how many
        subscriptions they ended.

        A subscription the new rules no longer allow (no rule matches its channel, or the
        rule's access refuses the connection, or the channel became private) is ended:
        the client is sent what a subscribe would now be refused with (see
        `channels.encoding.Encoding.ended`). A channel's slow-consumer policy and
        join/leave events change at once; its presence setting when it next starts on
        this node. A subscribe still
        under way is checked again against the new rules when it has read its start (see
        `subscribe`). The broker settings are not changed. Never raises for a channel:
        one no rule matches keeps its policy until it ends.
        """
        server = config.server
        self.flusher.reconfigure(
            server.flush_delay_seconds, server.flush_batch_connections, server.writer_linger_seconds
        )
        old, rules = self._rules, self._rule_book(config)
        self._rules = rules
        self._limits = server
        ended = 0
        for outbox, channels in self._subscriptions.items():
            grant = self._grants.get(outbox, _ANONYMOUS)
            for channel in list(channels):
                state = self._channels[channel]
                if outbox not in state.subscribers:
                    continue
                try:
                    rule = rules.resolve(channel)
                    rules.check(
                        rule, channel, "subscribe", grant, private_ok=_was_private(old, channel)
                    )
                except ChannelsError as exc:
                    _drop(channels, channel)
                    self._leave(outbox, channel)
                    outbox.put_nowait(outbox.encoding.ended(channel, exc))
                    ended += 1
        for channel, state in self._channels.items():
            try:
                rule = rules.resolve(channel)
            except ChannelsError:
                continue  # only a subscribe under way holds it: it is checked again
            state.policy = rules.policy(rule)
            state.join_leave = rule.join_leave
        return ended

    def subscribed(self, outbox: Outbox, channel: str) -> bool:
        """Whether *outbox* is a live subscriber of *channel*."""
        state = self._channels.get(channel)
        return state is not None and outbox in state.subscribers

    def unsubscribe(self, outbox: Outbox, channel: str) -> None:
        """End *outbox*'s subscription to *channel*. Never blocks.

        Raises:
            NotSubscribed: if *outbox* is not subscribed to *channel*.
        """
        channels = self._subscriptions[outbox]
        if channel not in channels:
            raise NotSubscribed(channel)
        _drop(channels, channel)
        self._leave(outbox, channel)

    async def disconnect_user(
        self, user: str, *, code: int, reason: str, until: float | None = None
    ) -> None:
        """Close every connection of *user*, on every node, with close *code* and
        *reason* (each sends what it holds first); with *until* (a Unix time), refuse
        the user's connections until then (see `bans`).

        Raises:
            BrokerUnavailable: if the broker cannot take the command now.
        """
        await self._carrier.command(Disconnect(user=user, code=code, reason=reason, until=until))

    async def unsubscribe_user(self, user: str, channel: str) -> None:
        """End *user*'s subscriptions to *channel*, on every node, each with an
        ``unsubscribed`` notice (code 210).

        Raises:
            InvalidChannelName, ChannelNotFound: for a bad channel.
            BrokerUnavailable: if the broker cannot take the command now.
        """
        self._rules.resolve(channel)
        await self._carrier.command(Unsubscribe(user=user, channel=channel))

    def occupancy(self, channel: str, occupied: bool) -> None:
        """*channel* got its first subscriber in the cluster, or lost its last (broker
        callback, on the one node whose change decided it)."""
        if self.observer is not None:
            name: ActivityName = "channel_occupied" if occupied else "channel_vacated"
            self.observer(Activity(name=name, channel=channel))

    def departed(self, channel: str, client: ClientInfo) -> None:
        """*client*'s user left *channel* (broker callback, on the node it left from)."""
        if self.observer is not None:
            self.observer(Activity(name="member_left", channel=channel, client=client))

    def command(self, command: Command) -> None:
        """Apply a command of the server API to this node's connections (broker callback)."""
        match command:
            case Disconnect(user=user, code=code, reason=reason, until=until):
                if until is not None:
                    self.bans.apply(command)
                ending = Ending(code, reason)
                for outbox in list(self._users.get(user, ())):  # a close may detach it
                    outbox.close(ending)
            case Unsubscribe(user=user, channel=channel):
                state = self._channels.get(channel)
                for outbox in self._users.get(user, ()):
                    channels = self._subscriptions[outbox]
                    # Live subscriptions only: one still joining is left to finish (as a
                    # reload leaves it), and may be ended by the next unsubscribe.
                    if state is not None and outbox in state.subscribers:
                        _drop(channels, channel)
                        self._leave(outbox, channel)
                        ended = UnsubscribedByServer(channel)
                        outbox.put_nowait(outbox.encoding.ended(channel, ended))

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        *,
        trusted: bool,
        by: Outbox | None = None,
        idempotency_key: str | None = None,
        private_ok: bool = False,
    ) -> Published:
        """Publish *data* (encoded JSON) on *channel* and return its position.

        Args:
            channel: where to publish.
            data: the message's data, already-encoded JSON.
            trusted: True for the authenticated HTTP API, which may publish where
                clients may not.
            by: the publishing connection, whose grant the rule is checked against.
            private_ok: whether the caller is authorized for *channel* (a Pusher client
                subscribed to it with a valid signature): a channel private by its name
                (see `channels.rules.NameKind`) takes untrusted messages only then.
            idempotency_key: a key of the publisher's choosing: a publish with a key
                already seen on *channel* within ``server.idempotency_window_seconds`` is
                not published again, and returns the first one's position as a duplicate
                (a publisher may retry after a timeout without publishing twice).

        Returns once the broker accepted the message.

        Raises:
            InvalidChannelName, ChannelNotFound: for a bad channel.
            PermissionDenied: if clients may not publish there and *trusted* is False.
            MessageTooLarge: if *data* exceeds the rule's ``max_message_bytes``.
            InvalidData: if *data* does not have the rule's ``data`` shape.
            ServerClosing: if the hub is closing.
        """
        rule = self.check_publish(channel, data, trusted=trusted, by=by, private_ok=private_ok)
        published = await self._carrier.publish(
            channel,
            data,
            rule.history,
            key=idempotency_key,
            window_seconds=self._limits.idempotency_window_seconds,
        )
        if not published.duplicate:
            self._accepted += 1
            if by is not None and self.observer is not None:
                client = self._clients[by]
                self.observer(
                    Activity(name="client_published", channel=channel, client=client, data=data)
                )
        return published

    def check_publish(
        self,
        channel: str,
        data: msgspec.Raw,
        *,
        trusted: bool,
        by: Outbox | None = None,
        private_ok: bool = False,
    ) -> ChannelRule:
        """Make sure `publish` would take *data* on *channel* (as its arguments say), and
        return the channel's rule; publish nothing.

        A caller that publishes several messages at once checks them all first, so that
        a refusal publishes none of them.

        Raises:
            What `publish` raises before it reaches the broker, and PermissionDenied for
            an untrusted message that would leave out another client than its publisher
            (see `open_hub`'s *sender_of*).
        """
        if self.closing:
            raise ServerClosing
        rule = self._resolve(channel, "publish", by, trusted=trusted, private_ok=private_ok)
        if len(data) > rule.max_message_bytes:
            raise MessageTooLarge(channel, len(data), rule.max_message_bytes)
        self._rules.check_data(rule, channel, data)
        if not trusted and self._sender_of is not None:
            sender = self._sender_of(data)
            if sender is not None and (by is None or self._clients[by].client != sender):
                raise PermissionDenied(channel, "publish", "only its own publisher may be left out")
        return rule

    def check_channel(self, channel: str) -> None:
        """Make sure *channel* is a name some rule takes.

        Raises:
            InvalidChannelName, ChannelNotFound: for a bad channel.
        """
        self._rules.resolve(channel)

    async def broadcast(
        self,
        channels: Sequence[str],
        data: msgspec.Raw,
        *,
        trusted: bool,
        idempotency_key: str | None = None,
    ) -> list[Published | ChannelsError]:
        """Publish *data* on each of *channels* as `publish` would; return each one's
        position, or what refused it there, in the order given.

        One channel's refusal (its name, its rule, the data's size or shape, the broker)
        is its result and does not stop the others. The *idempotency_key* applies per
        channel, so a retried broadcast publishes nowhere twice. A channel named twice
        is published to twice.

        Raises:
            TooManyChannels: if *channels* are more than ``server.broadcast_max_channels``.
            ServerClosing: if the hub is closing.
        """
        limit = self._limits.broadcast_max_channels
        if len(channels) > limit:
            raise TooManyChannels(len(channels), limit)
        results: list[Published | ChannelsError] = []
        for channel in channels:
            try:
                published = await self.publish(
                    channel, data, trusted=trusted, idempotency_key=idempotency_key
                )
            except ServerClosing:
                raise
            except ChannelsError as exc:
                results.append(exc)
            else:
                results.append(published)
        return results

    async def presence(
        self,
        channel: str,
        *,
        by: Outbox | None = None,
        trusted: bool = False,
        private_ok: bool = False,
    ) -> list[ClientInfo]:
        """Return the clients subscribed to *channel*, on every node.

        Only to a caller that may subscribe to it: *by*, *trusted* and *private_ok* are
        as for `history`.

        Raises:
            InvalidChannelName, ChannelNotFound: for a bad channel.
            PermissionDenied: if the caller may not subscribe to *channel*.
            PresenceDisabled: if the channel's rule keeps no presence.
        """
        self._presence_rule(channel, by, trusted=trusted, private_ok=private_ok)
        clients = await self._carrier.presence(channel)
        # A reload may have changed the answer while the broker read: the rules in
        # force now decide, as for a subscription.
        self._presence_rule(channel, by, trusted=trusted, private_ok=private_ok)
        return clients

    def _presence_rule(
        self, channel: str, by: Outbox | None, *, trusted: bool, private_ok: bool
    ) -> None:
        rule = self._resolve(channel, "subscribe", by, trusted=trusted, private_ok=private_ok)
        if not rule.presence:
            raise PresenceDisabled(channel)

    def event(self, channel: str, event: Event, client: ClientInfo) -> None:
        """Send a join or leave event to *channel*'s local subscribers (broker callback).

        Under the connection's bounds: a subscriber whose outbox is full is a slow
        consumer, whatever the channel's policy (events carry no offset to report).
        """
        state = self._channels.get(channel)
        if state is None or not state.subscribers:
            return
        encoding = self._encoding
        delivery = Delivery(
            None,
            0,
            encoding.event(channel, event, client),
            encoding=encoding,
            render=lambda other: other.event(channel, event, client),
        )
        # Where messages do not go back to their sender, neither does a join or leave.
        excluded = None if self._sender_of is None else self._subscriber(state, client.client)
        for outbox in state.subscribers:
            if outbox is not excluded:
                outbox.offer(delivery)

    async def history(
        self,
        channel: str,
        *,
        after: int | None,
        limit: int | None,
        by: Outbox | None = None,
        trusted: bool = False,
        private_ok: bool = False,
    ) -> HistoryPage:
        """Read *channel*'s kept messages: after offset *after*, or the newest *limit*.

        Only to a caller that may subscribe to *channel*: history reveals what a
        subscription would.

        Args:
            channel: the channel to read.
            after: read the messages after this offset; None for the newest.
            limit: read at most this many (at most the channel's ``history.size``); None
                for every kept message.
            by: the reading connection, whose grant is checked; None for an anonymous
                caller (the HTTP API without a key).
            trusted: True for the HTTP API with a key, which may read any channel.
            private_ok: whether the caller showed a subscription token for *channel*.

        Raises:
            InvalidChannelName, ChannelNotFound: for a bad channel.
            PermissionDenied: if the caller may not subscribe to *channel*.
        """
        rule = self._resolve(channel, "subscribe", by, trusted=trusted, private_ok=private_ok)
        # No page holds more than the channel keeps (a Redis stream trims approximately).
        size = rule.history.size
        page = await self._carrier.read(
            channel, after=after, epoch=None, limit=size if limit is None else min(limit, size)
        )
        # As for presence: the rules in force when the page is read decide.
        self._resolve(channel, "subscribe", by, trusted=trusted, private_ok=private_ok)
        return page

    def deliver(self, publication: Publication) -> None:
        """Offer *publication* to every local subscriber of its channel (broker callback)."""
        self._published += 1
        state = self._channels.get(publication.channel)
        if state is None:
            return
        if not state.subscribers and not state.joining:
            return
        state.last_offset = publication.offset
        state.messages += 1
        delivery = self._delivery(publication, state.policy)
        sender = None if self._sender_of is None else self._sender_of(publication.data)
        excluded = None if sender is None else self._subscriber(state, sender)
        for outbox, joining in state.joining.items():
            joining.hold(delivery, outbox)
        skip_until = state.skip_until
        if not skip_until and excluded is None:
            for outbox in state.subscribers:
                outbox.offer(delivery)
            return
        for outbox in state.subscribers:
            if outbox is excluded:
                continue
            start = skip_until.get(outbox)
            if start is not None:
                if publication.offset <= start:
                    continue
                del skip_until[outbox]
            outbox.offer(delivery)

    def _subscriber(self, state: LocalChannel, client: str) -> Outbox | None:
        """The subscriber of *state* whose client id is *client*, if it has one here."""
        clients = self._clients
        for outbox in state.subscribers:
            if clients[outbox].client == client:
                return outbox
        return None

    def lost(self, channel: str, first: int, last: int) -> None:
        """Tell *channel*'s local subscribers that offsets *first* to *last* are lost.

        The broker calls this when the node missed publications it can no longer read.
        """
        state = self._channels.get(channel)
        if state is None:
            return
        for joining in state.joining.values():
            joining.lose(first, last)
        for outbox in state.subscribers:
            # A subscriber that started past the lost range missed nothing of it.
            start = state.skip_until.get(outbox, 0)
            if last > start:
                outbox.record_gap(channel, max(first, start + 1), last)

    def restarted(self, channel: str, epoch: str) -> None:
        """Tell *channel*'s local subscribers its stream started again in *epoch*.

        The broker calls this when it lost the stream (Redis restarted without
        persistence); what follows has offsets from 1 in the new epoch.
        """
        state = self._channels.get(channel)
        if state is None:
            return
        state.last_offset = 0
        state.skip_until.clear()
        for outbox in state.subscribers:
            outbox.record_restart(channel, epoch)

    def statistics(self) -> HubStatistics:
        """Return the hub's current counters."""
        return HubStatistics(
            connections=len(self._subscriptions),
            channels=len(self._channels),
            subscriptions=sum(len(channels) for channels in self._subscriptions.values()),
            published=self._published,
            accepted=self._accepted,
            dropped=self._dropped_by_gone + sum(outbox.dropped for outbox in self._subscriptions),
            slow_consumers=self._slow_consumers_gone
            + sum(outbox.failed for outbox in self._subscriptions),
            broker_ready=self._carrier.ready,
            broker_round_trip_seconds=self._carrier.round_trip_seconds,
        )

    def channel_statistics(self, limit: int, *, trusted: bool = False) -> list[ChannelStatistics]:
        """Return the *limit* channels with the most local subscribers, most first.

        Untrusted (an HTTP API caller without a key), only the channels an anonymous
        client may subscribe to: a channel's name and subscribers are its business.
        """
        channels = (
            ChannelStatistics(name, len(state.subscribers) + len(state.joining), state.messages)
            for name, state in self._channels.items()
            if trusted or self._may_subscribe(name)
        )
        return heapq.nsmallest(limit, channels, key=lambda item: (-item.subscribers, item.channel))

    async def channels(
        self, *, prefix: str = "", cursor: str | None = None, limit: int, trusted: bool
    ) -> ChannelsPage:
        """The channels with at least one subscriber on any node, in name order, with
        their subscribers on every node: those whose name starts with *prefix*, after
        *cursor* (a page's), at most *limit*.

        Untrusted, only the channels an anonymous client may subscribe to are listed,
        and the cursor is always one of them: the list reads on past the others (at most
        `UNTRUSTED_LIST_READS` pages of the broker's), so that neither a page nor its
        cursor tells their names; past that many hidden channels the list may end early.

        Raises:
            BrokerUnavailable: if the broker cannot be read now.
        """
        listed: list[ChannelCount] = []
        after = cursor or ""
        for _ in range(1 if trusted else UNTRUSTED_LIST_READS):
            found = await self._carrier.channels(prefix, after, limit)
            more = len(found) > limit
            for name, subscribers in found[:limit]:
                if trusted or self._may_subscribe(name):
                    listed.append(ChannelCount(name, subscribers))
                    if len(listed) == limit:
                        return ChannelsPage(listed, name if more or name != found[-1][0] else None)
            if not more:
                return ChannelsPage(listed, None)
            after = found[limit - 1][0]
        # Read as far as an untrusted caller may make it read: it goes on from the last
        # channel it may see, or nowhere (its cursor must not name a hidden one).
        return ChannelsPage(listed, listed[-1].channel if listed else None)

    def _resolve(
        self,
        channel: str,
        action: Action,
        by: Outbox | None,
        *,
        trusted: bool = False,
        private_ok: bool = False,
    ) -> ChannelRule:
        """Return *channel*'s rule once the caller may *action* there.

        This is the one access decision of the engine: every operation that reveals a
        channel's content or members (subscribe, recovery, history, presence) asks it for
        ``subscribe``, and publish for ``publish``.

        Args:
            channel: the channel's name.
            action: ``subscribe`` (also for every read) or ``publish``.
            by: the calling connection, whose grant is checked; None for an anonymous
                caller.
            trusted: True for the HTTP API with a key: no access check.
            private_ok: whether the caller showed a subscription token for *channel*.

        Raises:
            InvalidChannelName, ChannelNotFound: for a bad channel.
            PermissionDenied: if the caller may not.
        """
        rule = self._rules.resolve(channel)
        if not trusted:
            grant = _ANONYMOUS if by is None else self._grants.get(by, _ANONYMOUS)
            self._rules.check(rule, channel, action, grant, private_ok=private_ok)
        return rule

    def _may_subscribe(self, channel: str) -> bool:
        """Whether an anonymous client may subscribe to *channel* now."""
        try:
            self._resolve(channel, "subscribe", None)
        except ChannelsError:
            return False
        return True

    def _delivery(self, publication: Publication, policy: SlowConsumerPolicy) -> Delivery:
        encoding = self._encoding
        return Delivery(
            publication.channel,
            publication.offset,
            encoding.message(publication),
            policy,
            time.monotonic(),
            encoding=encoding,
            render=lambda other: other.message(publication),
        )

    def _leave(self, outbox: Outbox, channel: str) -> None:
        # An outbox lists a channel exactly while it is a subscriber or joining there.
        state = self._channels[channel]
        live = state.subscribers.pop(outbox, False) is None
        state.joining.pop(outbox, None)
        state.skip_until.pop(outbox, None)
        client = state.members.pop(outbox, None) or self._clients[outbox]
        # By user, the broker decides whether the user left, and then tells `departed`
        # (a subscribe that failed after its entry was written is counted out, quietly).
        by_user = state.by_user
        if state.presence:
            self._carrier.remove_presence(channel, client, by_user=by_user, quiet=not live)
        if live:
            if state.presence and not by_user and self.observer is not None:
                self.observer(Activity(name="member_left", channel=channel, client=client))
            self._carrier.count(channel, len(state.subscribers))
        if live and state.join_leave and not by_user:
            self._carrier.announce(channel, "leave", client)
        if not state.subscribers and not state.joining:
            del self._channels[channel]
            self._carrier.unsubscribe(channel)


def _was_private(rules: RuleBook, channel: str) -> bool:
    """Whether *channel* was private under *rules*: a subscription to it then showed a
    subscription token, which a reload keeps honouring while the channel stays private."""
    try:
        return rules.resolve(channel).private
    except ChannelsError:
        return False


@asynccontextmanager
async def open_hub(
    config: Config,
    encoding: Encoding,
    *,
    kinds: Sequence[NameKind] = (),
    sender_of: Callable[[msgspec.Raw], str | None] | None = None,
) -> AsyncIterator[Hub]:
    """Open the broker *config* names and a hub on top of it, with its flusher running.

    Args:
        config: the node's configuration.
        encoding: turns publications and events into what subscribers are sent; a
            publication is encoded once, whatever the number of subscribers.
        kinds: what a channel is by its name, whatever its rule says (see
            `channels.rules.NameKind`).
        sender_of: finds in a message's data the id of the client that must not
            receive it (the one that published it through a wire that says so), if any;
            called once per message delivered on this node. With it, a connection is
            not sent its own join and leave events either.
    """
    # The hub first: it is what the broker reports to.
    hub = Hub(config, encoding, kinds=kinds, sender_of=sender_of)
    async with open_broker(config.broker, hub) as broker, anyio.create_task_group() as tg:
        hub.run_on(broker)
        await tg.start(hub.flusher.run)
        try:
            yield hub
        finally:
            tg.cancel_scope.cancel()


def _drop(channels: list[str], channel: str) -> None:
    """Take *channel* out of a connection's *channels*, if it is there."""
    if channel in channels:
        channels.remove(channel)
