"""The Pusher protocol on one WebSocket (``/app/{key}``): the door's `PusherDoor` for
`service.session.run_session`, and the protocol state of a connection.

The engine decides everything a channel reveals: a private or presence channel needs
its authorization signed with the app's secret, which this module checks and shows the
engine as ``private_ok``; the hub's rules make every ``private-`` and ``presence-``
channel private whatever else they say (see `service.apps`).
"""

from __future__ import annotations

import logging
import secrets
from contextlib import suppress
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from channels.errors import ChannelsError, NotSubscribed, PermissionDenied
from channels.publication import ClientInfo
from service.closecodes import CloseCode
from service.errors import (
    BadJSON,
    BadMessage,
    InvalidToken,
    ProtocolError,
    Unauthenticated,
    UnknownOp,
)
from service.pusher.codes import PusherCode
from service.pusher.names import is_cache, is_encrypted, is_presence, is_private
from service.pusher.protocol import (
    DATA_MAX_DEPTH,
    ENCODING,
    NULL,
    ChannelData,
    Envelope,
    SigninData,
    SubscribeData,
    UnsubscribeData,
    UserData,
    decode_data,
    decode_incoming,
    encode_envelope,
    encode_error,
    encode_event,
    nesting,
)
from service.pusher.signatures import authorization_ok

if TYPE_CHECKING:
    from collections import Counter

    from channels.connection import Connection
    from channels.hub import Subscribed
    from service.apps import App
    from service.settings import AppSettings, ServerSettings

__all__ = (
    "PusherDoor",
    "PusherSession",
    "new_socket_id",
)

logger = logging.getLogger("clarion")

#: The longest event name Pusher accepts.
EVENT_NAME_MAX_LENGTH: Final = 200

#: The code of a refused client event.
_REFUSED: Final = PermissionDenied.code

_PING = encode_event("pusher:ping", {})
_PONG = encode_event("pusher:pong", {})

#: How the close codes of `service.session.run_session` read to a Pusher client, whose
#: library decides from the code whether to reconnect (4200-4299 at once, 4100-4199
#: after a backoff, 4000-4099 never).
_CLOSES: Final[dict[int, tuple[int, str]]] = {
    CloseCode.GOING_AWAY: (PusherCode.RECONNECT, "server shutting down: reconnect"),
    CloseCode.SLOW_CONSUMER: (PusherCode.OVER_CAPACITY, "slow consumer"),
    CloseCode.NO_PONG: (PusherCode.PONG_NOT_RECEIVED, "pong reply not received"),
}


def new_socket_id() -> str:
    """A socket id as Pusher's are (``\\d+.\\d+``), unguessable."""
    return f"{secrets.randbelow(10**15)}.{secrets.randbelow(10**15)}"


class PusherDoor:
    """The Pusher protocol for one app's connections (see `service.session.Door`)."""

    __slots__ = ("_errors", "_server", "_sign_in_first", "app", "encoding", "quiet_seconds")

    def __init__(
        self,
        app: App,
        server: ServerSettings,
        *,
        errors: Counter[int] | None = None,
        sign_in_first: bool = False,
    ) -> None:
        self.encoding = ENCODING
        self.app = app
        self._server = server
        self._errors = errors
        self._sign_in_first = sign_in_first
        self.quiet_seconds = float(app.settings.activity_timeout_seconds)

    def client(self, user: str | None) -> ClientInfo:
        """A new connection's identity: its socket id."""
        return ClientInfo(new_socket_id(), user)

    def open(self, connection: Connection, stop: anyio.CancelScope) -> PusherSession:
        """Start the protocol: ``pusher:connection_established`` goes first."""
        session = PusherSession(
            connection,
            self.app,
            self._server,
            errors=self._errors,
            sign_in_first=self._sign_in_first,
        )
        session.greet()
        return session

    @staticmethod
    def close(code: int, reason: str) -> tuple[int, str]:
        """The Pusher code of a close (`_CLOSES`; the door's own codes as they are)."""
        return _CLOSES.get(code, (code, reason))


class PusherSession:
    """One Pusher connection: its subscriptions and its client events' rate."""

    __slots__ = (
        "_app",
        "_ended",
        "_errors",
        "_events_refilled",
        "_events_tokens",
        "_members",
        "_sign_in_first",
        "connection",
    )

    def __init__(
        self,
        connection: Connection,
        app: App,
        server: ServerSettings,
        *,
        errors: Counter[int] | None = None,
        sign_in_first: bool = False,
    ) -> None:
        self.connection = connection
        self._app = app
        self._sign_in_first = sign_in_first
        """Whether a channel that needs no authorization needs a sign-in (the server's
        channels under ``auth.required``)."""
        self._errors = errors
        self._members: dict[str, ClientInfo | None] = {}
        """The channels subscribed to, with who the client is there (presence)."""
        self._events_tokens = app.settings.client_event_rate_per_second
        self._events_refilled = anyio.current_time()
        self._ended = False  # the connection is closing: its requests are ignored

    @property
    def app(self) -> AppSettings:
        """Its app's settings, as the last reload left them."""
        return self._app.settings

    @property
    def socket_id(self) -> str:
        """Its socket id (``\\d+.\\d+``), which authorizations sign."""
        return self.connection.client.client

    def greet(self) -> None:
        """Queue ``pusher:connection_established``."""
        data = {"socket_id": self.socket_id, "activity_timeout": self.app.activity_timeout_seconds}
        self.connection.send_now(encode_event("pusher:connection_established", data))
        self.connection.flush()

    def ping(self) -> None:
        """Queue ``pusher:ping``: the client was quiet for the activity timeout."""
        self.connection.send_now(_PING)
        self.connection.flush()

    async def handle(self, frame: str | bytes) -> None:
        """Run the client's event in *frame*."""
        connection = self.connection
        if self._ended:
            return
        try:
            incoming = decode_incoming(frame)
            event = incoming.event
            if event == "pusher:ping":
                await connection.send(_PONG)
            elif event == "pusher:pong":
                pass
            elif event == "pusher:subscribe":
                await self._subscribe(decode_data(incoming.data, SubscribeData, event))
            elif event == "pusher:signin":
                await self._sign_in(decode_data(incoming.data, SigninData, event))
            elif event == "pusher:unsubscribe":
                self._unsubscribe(decode_data(incoming.data, UnsubscribeData, event).channel)
            elif event.startswith("client-"):
                await self._client_event(incoming.channel, event, incoming.data)
            else:
                await self._error(UnknownOp.code, f"unknown event {event[:100]!r}")
        except (ProtocolError, ChannelsError) as exc:
            await self._error(exc.code, str(exc))
        connection.flush()

    async def _subscribe(self, data: SubscribeData) -> None:
        connection, channel = self.connection, data.channel
        presence, private = is_presence(channel), is_private(channel)
        if self._sign_in_first and not private and connection.client.user is None:
            await self._subscription_error(
                channel, "AuthError", 401, Unauthenticated.code, "sign in first (auth.required)"
            )
            return
        member = None
        if private:
            text = f"{self.socket_id}:{channel}"
            if presence:
                text += f":{data.channel_data or ''}"
            app = self.app
            if data.auth is None or not authorization_ok(app.key, app.secret, data.auth, text):
                await self._subscription_error(
                    channel, "AuthError", 401, InvalidToken.code, "invalid signature"
                )
                return
            if presence:
                try:
                    found = decode_data(data.channel_data or "", ChannelData, "channel_data")
                except BadMessage as exc:
                    await self._subscription_error(channel, "AuthError", 400, exc.code, str(exc))
                    return
                info = None if found.user_info == NULL else bytes(found.user_info).decode()
                member = ClientInfo(self.socket_id, str(found.user_id), info)

        cache = is_cache(channel)

        def reply(subscribed: Subscribed) -> None:
            connection.send_now(
                encode_event(
                    "pusher_internal:subscription_succeeded",
                    _presence_of(subscribed) if presence else {},
                    channel=channel,
                )
            )
            if cache and not subscribed.replayed:
                connection.send_now(encode_event("pusher:cache_miss", {}, channel=channel))

        try:
            await connection.subscribe(
                channel,
                on_subscribed=reply,
                private_ok=private,
                member=member,
                read_presence=presence,
                last=1 if cache else 0,
            )
        except ChannelsError as exc:
            kind = "AuthError" if exc.http_status in (401, 403) else "ChannelError"
            await self._subscription_error(
                channel, kind, exc.http_status or 400, exc.code, str(exc)
            )
            return
        self._members[channel] = member

    async def _sign_in(self, data: SigninData) -> None:
        """Take the user the app's backend signed *data* for; a bad signature ends the
        connection with 4009, as Pusher's does."""
        app = self.app
        text = f"{self.socket_id}::user::{data.user_data}"
        if not authorization_ok(app.key, app.secret, data.auth, text):
            await self._end(PusherCode.UNAUTHORIZED, "invalid signature")
            return
        try:
            user = msgspec.json.decode(data.user_data, type=UserData)
        except msgspec.DecodeError as exc:
            await self._error(BadMessage.code, f"user_data: {exc}")
            return
        self.connection.sign_in(user.id)
        await self.connection.send(
            encode_event("pusher:signin_success", {"user_data": data.user_data})
        )

    def _unsubscribe(self, channel: str) -> None:
        if self._members.pop(channel, False) is not False:
            # The server may have ended it already (an unsubscribe of the server API).
            with suppress(NotSubscribed):
                self.connection.unsubscribe(channel)

    async def _client_event(self, channel: str | None, event: str, data: msgspec.Raw) -> None:
        """Relay a ``client-*`` event to the channel's other subscribers."""
        if not self.app.client_events:
            await self._error(_REFUSED, "client events are not enabled")
        elif (
            channel is None
            or channel not in self._members
            or not self.connection.subscribed(channel)  # the server may have ended it
        ):
            await self._error(_REFUSED, "subscribe to the channel first")
        elif not is_private(channel):
            await self._error(
                _REFUSED,
                "client events go on private and presence channels only",
            )
        elif is_encrypted(channel):
            await self._error(_REFUSED, "client events are refused on encrypted channels")
        elif len(event) > EVENT_NAME_MAX_LENGTH:
            await self._error(
                _REFUSED,
                f"event names are {EVENT_NAME_MAX_LENGTH} characters at most",
            )
        elif not self._take_event_token():
            rate = self.app.client_event_rate_per_second
            await self._end(PusherCode.CLIENT_EVENT_RATE, f"client events over {rate:g} per second")
        else:
            member = self._members[channel]
            envelope = Envelope(
                event,
                data,
                None if member is None else member.user,
                self.socket_id,
            )
            if nesting(bytes(data)) > DATA_MAX_DEPTH:
                await self._error(BadJSON.code, f"data nests deeper than {DATA_MAX_DEPTH} levels")
                return
            encoded = encode_envelope(envelope)
            try:
                # Subscribed with a valid authorization: it may send on the channel.
                await self.connection.publish(channel, encoded, private_ok=True)
            except ChannelsError as exc:
                await self._error(exc.code, str(exc))

    def _take_event_token(self) -> bool:
        rate = self.app.client_event_rate_per_second
        now = anyio.current_time()
        elapsed, self._events_refilled = now - self._events_refilled, now
        self._events_tokens = min(max(rate, 1.0), self._events_tokens + elapsed * rate)
        if self._events_tokens < 1:
            return False
        self._events_tokens -= 1
        return True

    async def _end(self, code: int, reason: str) -> None:
        """Send ``pusher:error`` with *code*, then close the connection with it."""
        await self._error(code, reason)
        self._ended = True
        self.connection.end(code, reason)

    async def _error(self, code: int, message: str) -> None:
        if self._errors is not None:
            self._errors[code] += 1
        await self.connection.send(encode_error(code, message))

    async def _subscription_error(
        self, channel: str, kind: str, status: int, code: int, message: str
    ) -> None:
        if self._errors is not None:
            self._errors[code] += 1
        data = {"type": kind, "error": message, "status": status, "code": code}
        await self.connection.send(encode_event("pusher:subscription_error", data, channel=channel))


def _presence_of(subscribed: Subscribed) -> dict[str, object]:
    """A presence channel's members as ``subscription_succeeded`` shows them: each user
    once, however many connections it has."""
    hash_: dict[str, msgspec.Raw | None] = {}
    for client in subscribed.presence or ():
        if client.user is not None:
            hash_[client.user] = None if client.info is None else msgspec.Raw(client.info.encode())
    return {"presence": {"ids": list(hash_), "hash": hash_, "count": len(hash_)}}
