"""One client connection as the engine sees it: the one way in for a wire protocol.

A door (Clarion's protocol, and later others) decodes a client's requests, calls its
`Connection`, and lets the engine send what it hands back: replies it queued, channel
messages, notices, each encoded by the hub's `channels.encoding.Encoding`. Open one with
`Hub.connect`; everything that reveals a channel goes through the hub's one access
decision, with this connection's grant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from channels.control import Ending

if TYPE_CHECKING:
    from collections.abc import Callable

    import msgspec

    from channels.hub import Hub, Subscribed
    from channels.outbox import Outbox
    from channels.publication import ClientInfo, HistoryPage, Position, Published
    from channels.sender import Sender

__all__ = ("Connection",)


class Connection:
    """A connection attached to a hub: its outbox, its sender and its subscriptions.

    ``client`` is who it is in presence and events. Use it as a context manager:
    leaving the block stops its sender and leaves the hub (every channel), without
    blocking.
    """

    __slots__ = ("_hub", "_outbox", "_sender", "client")

    def __init__(self, hub: Hub, outbox: Outbox, sender: Sender, client: ClientInfo) -> None:
        self._hub = hub
        self._outbox = outbox
        self._sender = sender
        self.client = client

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._sender.stop()
        self._hub.detach(self._outbox)

    @property
    def failed(self) -> bool:
        """Whether its outbox overflowed under the ``disconnect`` policy (a slow consumer)."""
        return self._outbox.failed

    @property
    def closed(self) -> bool:
        """Whether the hub closed it (a drain, or a disconnect of its user): it sends what
        it holds, then ends."""
        return self._outbox.closed

    @property
    def ending(self) -> Ending | None:
        """Why the hub closed it, when it disconnected its user (None for a drain)."""
        return self._outbox.ending

    async def subscribe(
        self,
        channel: str,
        *,
        since: Position | None = None,
        on_subscribed: Callable[[Subscribed], None],
        private_ok: bool = False,
        member: ClientInfo | None = None,
        read_presence: bool = False,
        last: int = 0,
    ) -> None:
        """Subscribe to *channel* (see `Hub.subscribe`); *on_subscribed* queues the reply
        with `send_now`, before the channel's messages."""
        await self._hub.subscribe(
            self._outbox,
            channel,
            since=since,
            on_subscribed=on_subscribed,
            private_ok=private_ok,
            member=member,
            read_presence=read_presence,
            last=last,
        )

    def sign_in(self, user: str) -> None:
        """Make this connection *user*'s from now on (see `Hub.sign_in`)."""
        self.client = self._hub.sign_in(self._outbox, user)

    def subscribed(self, channel: str) -> bool:
        """Whether this connection is subscribed to *channel* now (a subscribe still
        under way is not yet; one the server ended is no longer)."""
        return self._hub.subscribed(self._outbox, channel)

    def unsubscribe(self, channel: str) -> None:
        """End the subscription to *channel* (see `Hub.unsubscribe`)."""
        self._hub.unsubscribe(self._outbox, channel)

    async def publish(
        self,
        channel: str,
        data: msgspec.Raw,
        *,
        idempotency_key: str | None = None,
        private_ok: bool = False,
    ) -> Published:
        """Publish as this connection (see `Hub.publish`)."""
        return await self._hub.publish(
            channel,
            data,
            trusted=False,
            by=self._outbox,
            idempotency_key=idempotency_key,
            private_ok=private_ok,
        )

    async def history(
        self, channel: str, *, after: int | None, limit: int | None, private_ok: bool = False
    ) -> HistoryPage:
        """Read *channel*'s kept messages, as this connection may (see `Hub.history`)."""
        return await self._hub.history(
            channel, after=after, limit=limit, by=self._outbox, private_ok=private_ok
        )

    async def presence(self, channel: str, *, private_ok: bool = False) -> list[ClientInfo]:
        """List *channel*'s clients, as this connection may (see `Hub.presence`)."""
        return await self._hub.presence(channel, by=self._outbox, private_ok=private_ok)

    def end(self, code: int, reason: str) -> None:
        """End the connection on purpose: what is queued is still sent, then it closes
        with *code* and *reason* (see `ending`)."""
        self._outbox.close(Ending(code, reason))

    async def send(self, data: bytes) -> None:
        """Queue *data* (a reply) behind what is queued, waiting while the outbox is full."""
        await self._outbox.put(data)

    def send_now(self, data: bytes) -> None:
        """Queue *data* now, even beyond the outbox's capacity (by one reply at most)."""
        self._outbox.put_nowait(data)

    def flush(self) -> None:
        """Send what is queued now rather than at the flusher's next tick; never waits."""
        self._sender.flush()
