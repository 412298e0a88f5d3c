"""Brokers carry publications between nodes and keep each channel's stream.

A broker is chosen by ``broker.kind`` in the configuration and imported lazily, so a
node only loads the client library of the broker it uses.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from channels.publication import ClientInfo, Publication

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import msgspec

    from channels.config import BrokerConfig, History
    from channels.control import Command
    from channels.publication import HistoryPage, Published

__all__ = ("Broker", "Deliver", "Event", "Receiver", "open_broker")

Event: TypeAlias = Literal["join", "leave"]
"""A presence event: a client subscribed to a channel, or left it."""

Deliver: TypeAlias = Callable[[Publication], None]
"""The callback a broker hands each received publication to."""


class Receiver(Protocol):
    """What a broker reports to (the hub)."""

    def deliver(self, publication: Publication) -> None:
        """Take a publication of a channel this node is subscribed to, in offset order."""
        ...

    def lost(self, channel: str, first: int, last: int) -> None:
        """Offsets *first* to *last* of *channel* were missed here and are no longer kept.

        A multi-node broker reports this when its connection to the others broke.
        """
        ...

    def restarted(self, channel: str, epoch: str) -> None:
        """*channel*'s stream started again in a new *epoch* (the broker lost it).

        Publications that follow have offsets from 1 in that epoch.
        """
        ...

    def event(self, channel: str, event: Event, client: ClientInfo) -> None:
        """*client* joined or left *channel* (on any node), as announced."""
        ...

    def command(self, command: Command) -> None:
        """Apply a command of the server API (sent by any node, this one included)."""
        ...

    def departed(self, channel: str, client: ClientInfo) -> None:
        """*client*'s user left *channel*'s presence: this node removed its last entry
        (a `Broker.remove_presence` by user), and announced its ``leave``."""
        ...

    def occupancy(self, channel: str, occupied: bool) -> None:
        """*channel* got its first subscriber in the cluster, or lost its last.

        Reported on one node only: the one whose `Broker.count` decided it (with Redis,
        or the node that noticed another had died with the channel's last subscribers).
        """
        ...


class Broker(Protocol):
    """What the hub needs from a broker.

    Every publication accepted by `publish` is handed to the receiver given to
    `open_broker`, on every node subscribed to its channel, in offset order.
    """

    @property
    def ready(self) -> bool:
        """Whether the broker can take publications now (its last check reached it)."""
        ...

    @property
    def round_trip_seconds(self) -> float | None:
        """How long its last check took to reach the broker and back (None: no check)."""
        ...

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        history: History,
        *,
        key: str | None = None,
        window_seconds: float = 0.0,
    ) -> Published:
        """Append *data* to *channel*'s stream and return its position.

        Returns once the broker accepted the message; keeps it in history per *history*.
        With an idempotency *key* seen on *channel* in the last *window_seconds*, appends
        nothing and returns the position of that first publish, as a duplicate; deciding
        this and appending are one atomic step, across every node.
        """
        ...

    async def read(
        self, channel: str, *, after: int | None, epoch: str | None, limit: int | None
    ) -> HistoryPage:
        """Read kept publications of *channel*.

        With *after*, the first *limit* publications whose offset is greater; without it,
        the newest *limit*. ``limit=None`` reads everything kept. The page is incomplete
        when *epoch* is given and is not the stream's, or when a message after *after*
        is no longer kept.
        """
        ...

    async def subscribe(self, channel: str) -> None:
        """Make sure this node receives *channel*'s publications. Idempotent.

        Once it returns, every later publication of the channel's current epoch reaches
        *deliver*, and a `read` returns a position in that same epoch.
        """
        ...

    def unsubscribe(self, channel: str) -> None:
        """Tell the broker no local subscriber is left on *channel*. Never blocks."""
        ...

    async def add_presence(
        self, channel: str, client: ClientInfo, *, by_user: bool = False
    ) -> bool:
        """Record that *client* is subscribed to *channel*, until `remove_presence`;
        return whether it is a new entry and, *by_user* (the channel's members are
        users), its user's first there.

        A multi-node broker lets the record expire unless this node keeps refreshing it,
        so the clients of a node that died disappear. Of two clients of a user added at
        once, on any nodes, one only is the first.
        """
        ...

    def remove_presence(
        self, channel: str, client: ClientInfo, *, by_user: bool = False, quiet: bool = False
    ) -> None:
        """Forget that *client* is subscribed to *channel*. Never blocks.

        With *by_user*, once it is forgotten, if no other client of its user is left,
        the broker announces *client*'s ``leave`` to every node and tells this node's
        receiver it `departed`; deciding and announcing are one atomic step. *quiet*:
        count it out, announce nothing (its join was never announced).
        """
        ...

    async def presence(self, channel: str) -> list[ClientInfo]:
        """Return the clients subscribed to *channel*, on every node."""
        ...

    def announce(self, channel: str, event: Event, client: ClientInfo) -> None:
        """Tell every node's subscribers of *channel* that *client* joined or left.

        Never blocks; the announcement is best effort (it is lost if the broker is down).
        """
        ...

    def count(self, channel: str, subscribers: int) -> None:
        """Note that this node has *subscribers* live subscribers on *channel* now (0:
        none left). Never blocks; other nodes see it within the broker's upkeep."""
        ...

    async def channels(self, prefix: str, after: str, limit: int) -> list[tuple[str, int]]:
        """The channels with subscribers on any node whose name starts with *prefix* and
        comes after *after* (``""``: from the first), in name order, with their
        subscribers on every node: at most *limit* + 1, the last saying there are more.
        """
        ...

    async def command(self, command: Command) -> None:
        """Hand *command* to every node's receiver, this one's included.

        A ban (a `Disconnect` with ``until``) is kept until it ends, and reaches a node
        that starts, or reconnects to the broker, later. A command without one reaches
        the nodes connected now.
        """
        ...


@asynccontextmanager
async def open_broker(config: BrokerConfig, receiver: Receiver) -> AsyncIterator[Broker]:
    """Open the broker *config* names; it reports what it receives to *receiver*."""
    if config.kind == "memory":
        from channels.brokers.memory import MemoryBroker

        yield MemoryBroker(receiver)
        return
    if config.kind == "redis":
        from channels.brokers.redis import open_redis_broker

        async with open_redis_broker(config, receiver) as broker:
            yield broker
        return
    raise ValueError(f"unknown broker kind {config.kind!r}")  # pragma: no cover - Literal
