"""The in-process broker: one node, streams and history kept in memory."""

from __future__ import annotations

import secrets
from collections import Counter, OrderedDict, deque
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from channels.publication import ClientInfo, HistoryPage, Position, Publication, Published

if TYPE_CHECKING:
    import msgspec

    from channels.brokers import Event, Receiver
    from channels.config import History
    from channels.control import Command

__all__ = ("MemoryBroker",)


class _Stream:
    """One channel's offsets and kept messages."""

    __slots__ = ("epoch", "kept", "size", "subscribed", "top", "ttl")

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(6)
        self.top = 0
        self.kept: deque[tuple[float, Publication]] = deque()
        self.size = 0
        self.ttl = 0.0
        self.subscribed = False

    def expire(self, now: float) -> None:
        kept = self.kept
        while len(kept) > self.size:
            kept.popleft()
        if self.ttl:
            oldest_allowed = now - self.ttl
            while kept and kept[0][0] <= oldest_allowed:
                kept.popleft()


class MemoryBroker:
    """A broker for a single process: `publish` delivers at once, in offset order.

    A channel's stream (its epoch, offset counter and kept messages) lives while the
    channel has a local subscriber or keeps messages; after that it is forgotten, and the
    next publication starts a new epoch at offset 1.

    Every method is a checkpoint, as an async method of a networked broker would be.
    """

    def __init__(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self._streams: dict[str, _Stream] = {}
        self._presence: dict[str, dict[str, ClientInfo]] = {}
        self._users: dict[str, Counter[str]] = {}
        """Each channel's users' entry counts, where its members are users."""
        self._counts: dict[str, int] = {}
        self._keys: OrderedDict[tuple[str, str], tuple[float, Position]] = OrderedDict()
        """Idempotency keys by channel, with when they expire and where their publish went."""

    ready = True
    """Always: the memory broker is part of the process."""
    round_trip_seconds = None
    """None: nothing to reach."""

    @property
    def stream_count(self) -> int:
        """How many channel streams are held in memory."""
        return len(self._streams)

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        history: History,
        *,
        key: str | None = None,
        window_seconds: float = 0.0,
    ) -> Published:
        await anyio.lowlevel.checkpoint()
        if key is not None:
            now = anyio.current_time()
            self._forget_old_keys(now)
            seen = self._keys.get((channel, key))
            if seen is not None:
                return Published(seen[1], duplicate=True)
        stream = self._streams.get(channel) or self._streams.setdefault(channel, _Stream())
        stream.top += 1
        if history.size:
            publication = Publication(channel, stream.top, data.copy())
            stream.size, stream.ttl = history.size, history.ttl_seconds
            now = anyio.current_time()
            stream.kept.append((now, publication))
            stream.expire(now)
        else:
            publication = Publication(channel, stream.top, data)
        position = Position(stream.top, stream.epoch)
        if key is not None:
            self._keys[channel, key] = (now + window_seconds, position)
        self._receiver.deliver(publication)
        self._forget_if_idle(channel, stream)
        return Published(position)

    async def read(
        self, channel: str, *, after: int | None, epoch: str | None, limit: int | None
    ) -> HistoryPage:
        await anyio.lowlevel.checkpoint()
        stream = self._streams.get(channel)
        if stream is None:
            return HistoryPage(Position(0, ""), [], complete=after is None)
        stream.expire(anyio.current_time())
        position = Position(stream.top, stream.epoch)
        kept = [publication for _, publication in stream.kept]
        if after is None:
            found = kept if limit is None else kept[-limit:] if limit else []
            return HistoryPage(position, found, complete=True)
        oldest = kept[0].offset if kept else stream.top + 1
        if (epoch is not None and epoch != stream.epoch) or after > stream.top:
            return HistoryPage(position, [], complete=False)
        found = [publication for publication in kept if publication.offset > after]
        return HistoryPage(position, found[:limit], complete=oldest <= after + 1)

    async def subscribe(self, channel: str) -> None:
        # Mark the stream before yielding: a publish in between must not find it idle,
        # forget it, and so start a new epoch under the new subscriber.
        await anyio.lowlevel.checkpoint_if_cancelled()
        stream = self._streams.get(channel) or self._streams.setdefault(channel, _Stream())
        stream.subscribed = True
        await anyio.lowlevel.cancel_shielded_checkpoint()

    def unsubscribe(self, channel: str) -> None:
        stream = self._streams.get(channel)
        if stream is not None:
            stream.subscribed = False
            self._forget_if_idle(channel, stream)

    async def add_presence(
        self, channel: str, client: ClientInfo, *, by_user: bool = False
    ) -> bool:
        await anyio.lowlevel.checkpoint()
        clients = self._presence.setdefault(channel, {})
        new = client.client not in clients
        clients[client.client] = client
        if not (new and by_user and client.user is not None):
            return new
        counts = self._users.setdefault(channel, Counter())
        counts[client.user] += 1
        return counts[client.user] == 1

    def remove_presence(
        self, channel: str, client: ClientInfo, *, by_user: bool = False, quiet: bool = False
    ) -> None:
        clients = self._presence.get(channel)
        if clients is None or clients.pop(client.client, None) is None:
            return
        if not clients:
            del self._presence[channel]
        counts = self._users.get(channel)
        if not by_user or counts is None or client.user is None:
            return
        counts[client.user] -= 1
        if counts[client.user] <= 0:
            del counts[client.user]
            if not counts:
                del self._users[channel]
            if not quiet:
                self._receiver.event(channel, "leave", client)
                self._receiver.departed(channel, client)

    async def presence(self, channel: str) -> list[ClientInfo]:
        await anyio.lowlevel.checkpoint()
        return list(self._presence.get(channel, {}).values())

    def announce(self, channel: str, event: Event, client: ClientInfo) -> None:
        self._receiver.event(channel, event, client)

    def _forget_old_keys(self, now: float) -> None:
        """Drop the idempotency keys whose window has passed, oldest first.

        Keys are kept in the order they came, so this stops at the first live one; a key
        given a longer window earlier (before a reload) may keep later ones a while.
        """
        keys = self._keys
        while keys:
            first = next(iter(keys))
            if keys[first][0] > now:
                return
            del keys[first]

    def _forget_if_idle(self, channel: str, stream: _Stream) -> None:
        if not stream.subscribed and not stream.kept:
            del self._streams[channel]

    async def command(self, command: Command) -> None:
        """Hand *command* to this node's receiver: the only node."""
        await anyio.lowlevel.checkpoint()
        self._receiver.command(command)

    def count(self, channel: str, subscribers: int) -> None:
        had = channel in self._counts
        if subscribers:
            self._counts[channel] = subscribers
        else:
            self._counts.pop(channel, None)
        if had != bool(subscribers):
            self._receiver.occupancy(channel, bool(subscribers))

    async def channels(self, prefix: str, after: str, limit: int) -> list[tuple[str, int]]:
        await anyio.lowlevel.checkpoint()
        names = sorted(name for name in self._counts if name > after and name.startswith(prefix))
        return [(name, self._counts[name]) for name in names[: limit + 1]]
