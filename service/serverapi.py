"""The server API: what an application backend asks of Clarion, in its own process.

``app.api`` (`Clarion.api`) is for code that runs beside the app, such as a FastAPI
route handler in the program that mounts it: it publishes, broadcasts and reads
history and presence without an HTTP round trip, as a caller of the HTTP API with a key
would (trusted: channel rules that refuse clients do not refuse it). The HTTP API's
handlers (`service.httpapi`) call the same methods, trusted only when the request shows
an API key. Every method raises the error classes of the protocol
(`channels.errors`, `service.errors`).

::

    clarion = create_app(settings)
    host.mount("/realtime", clarion)

    @host.post("/orders")
    async def order(order: Order) -> None:
        await clarion.api.publish("orders", {"id": order.id})
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import msgspec

from service.client.http import as_raw
from service.closecodes import CloseCode
from service.errors import BadMessage, NotStarted, Unauthorized

if TYPE_CHECKING:
    from collections.abc import Sequence

    from channels.errors import ChannelsError
    from channels.hub import Hub
    from channels.publication import ClientInfo, HistoryPage, Published
    from channels.statistics import ChannelsPage
    from service.app import Clarion

__all__ = (
    "CHANNELS_PAGE",
    "CHANNELS_PAGE_MAX",
    "CLOSE_CODES_OF_THE_API",
    "CLOSE_REASON_MAX_BYTES",
    "PresenceStats",
    "ServerAPI",
    "UNTIL_MAX",
)

#: Channels a page of `ServerAPI.channels` holds unless told otherwise, and at most.
CHANNELS_PAGE: Final = 100
CHANNELS_PAGE_MAX: Final = 1000
#: The close codes a disconnect may give (RFC 6455 leaves 4000-4999 to applications; the
#: first three are Clarion's own, after which its clients reconnect).
CLOSE_CODES_OF_THE_API: Final = (4003, 4999)
#: The latest ``until`` of a ban: 9999-12-31T23:59:59Z.
UNTIL_MAX: Final = 253_402_300_799.0
#: A close frame's reason is at most 123 bytes (a control frame's 125, less the code).
CLOSE_REASON_MAX_BYTES: Final = 123


class PresenceStats(msgspec.Struct, frozen=True):
    """How many are in a channel's presence: ``clients`` (connections) and distinct
    ``users`` (connections without a user count as none)."""

    clients: int
    users: int


class ServerAPI:
    """The server API of one `Clarion` app; *trusted* as a caller with an API key is."""

    def __init__(self, app: Clarion, *, trusted: bool = True) -> None:
        self._app = app
        self.trusted = trusted

    async def publish(
        self, channel: str, data: object, *, idempotency_key: str | None = None
    ) -> Published:
        """Publish *data* on *channel*; return where it went once the broker took it.

        *data* is encoded as JSON with msgspec (any value it encodes: dicts, lists,
        Structs, dataclasses...), except a `msgspec.Raw`, which is taken as already
        encoded JSON. With an *idempotency_key*, a publish retried within
        ``server.idempotency_window_seconds`` is not published twice (the result says
        ``duplicate``).

        Raises:
            InvalidChannelName, ChannelNotFound, PermissionDenied, MessageTooLarge,
            InvalidData, BrokerUnavailable, ServerClosing, NotStarted
        """
        return await self._hub().publish(
            channel, as_raw(data), trusted=self.trusted, idempotency_key=idempotency_key
        )

    async def broadcast(
        self, channels: Sequence[str], data: object, *, idempotency_key: str | None = None
    ) -> list[Published | ChannelsError]:
        """Publish *data* (encoded once, as for `publish`) on each of *channels*; return
        each one's result in order: where it went, or the error that refused it there.

        Raises:
            TooManyChannels: beyond ``server.broadcast_max_channels``.
            ServerClosing, NotStarted
        """
        return await self._hub().broadcast(
            channels, as_raw(data), trusted=self.trusted, idempotency_key=idempotency_key
        )

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> HistoryPage:
        """Read *channel*'s kept messages, oldest first: those after offset *since*, or
        the newest ones; at most *limit* (and never more than the channel keeps).

        Raises:
            InvalidChannelName, ChannelNotFound, PermissionDenied, BrokerUnavailable,
            NotStarted
        """
        return await self._hub().history(channel, after=since, limit=limit, trusted=self.trusted)

    async def presence(self, channel: str) -> list[ClientInfo]:
        """The clients subscribed to *channel* on every node.

        Raises:
            InvalidChannelName, ChannelNotFound, PermissionDenied, PresenceDisabled,
            BrokerUnavailable, NotStarted
        """
        return await self._hub().presence(channel, trusted=self.trusted)

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients and distinct users are in *channel*'s presence.

        Raises:
            As `presence`.
        """
        clients = await self.presence(channel)
        users = {client.user for client in clients if client.user is not None}
        return PresenceStats(clients=len(clients), users=len(users))

    async def channels(
        self, *, prefix: str = "", cursor: str | None = None, limit: int = CHANNELS_PAGE
    ) -> ChannelsPage:
        """The channels with at least one subscriber on any node, in name order, with
        their subscribers: those whose name starts with *prefix*, at most *limit* (at
        most `CHANNELS_PAGE_MAX`), after *cursor* (the previous page's).

        Raises:
            BadMessage: for a *limit* out of bounds.
            BrokerUnavailable, NotStarted
        """
        if not 1 <= limit <= CHANNELS_PAGE_MAX:
            raise BadMessage(f"limit: must be from 1 to {CHANNELS_PAGE_MAX}, not {limit}")
        return await self._hub().channels(
            prefix=prefix, cursor=cursor, limit=limit, trusted=self.trusted
        )

    async def disconnect(
        self,
        user: str,
        *,
        code: int = CloseCode.DISCONNECTED,
        reason: str = "disconnected",
        until: float | None = None,
    ) -> None:
        """Close every connection of *user* on every node with close *code* (4003-4999)
        and *reason* (at most 123 bytes of UTF-8), once each has sent what it holds; with
        *until* (a Unix time), refuse the user's new connections until then (code 117),
        replacing an earlier ban (an *until* that has passed lifts it).

        Raises:
            BadMessage: for a code or reason a close frame cannot carry.
            BrokerUnavailable, NotStarted
        """
        self._check_trusted("disconnect")
        low, high = CLOSE_CODES_OF_THE_API
        if not low <= code <= high:
            raise BadMessage(
                f"code: must be from {low} to {high}, not {code} (4000-4002 are Clarion's "
                "own, after which its clients reconnect)"
            )
        if len(reason.encode()) > CLOSE_REASON_MAX_BYTES:
            raise BadMessage(f"reason: at most {CLOSE_REASON_MAX_BYTES} bytes of UTF-8")
        if until is not None and not (math.isfinite(until) and 0 <= until <= UNTIL_MAX):
            raise BadMessage(f"until: must be a Unix time in seconds, at most {UNTIL_MAX:g}")
        await self._hub().disconnect_user(user, code=code, reason=reason, until=until)

    async def unsubscribe(self, user: str, channel: str) -> None:
        """End *user*'s subscriptions to *channel* on every node; each gets an
        ``unsubscribed`` notice with code 210.

        Raises:
            InvalidChannelName, ChannelNotFound, BrokerUnavailable, NotStarted
        """
        self._check_trusted("unsubscribe")
        await self._hub().unsubscribe_user(user, channel)

    def _check_trusted(self, name: str) -> None:
        """Only a trusted caller acts on users' connections: no anonymous client may.

        Raises:
            Unauthorized: for an untrusted caller.
        """
        if not self.trusted:
            raise Unauthorized(f"{name} needs server.api_keys to be set, and one of them")

    def _hub(self) -> Hub:
        hub = self._app.hub
        if hub is None:
            raise NotStarted
        return hub
