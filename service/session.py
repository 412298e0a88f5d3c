"""Clarion's protocol on one WebSocket: its reader, on the engine's `Connection`.

The reader (the ASGI task itself) decodes each frame, runs the request on the
connection (`channels.connection.Connection`, from `Hub.connect`) and queues the reply;
the engine writes the connection's outbox from the hub's flusher or, when needed, from
a task the flusher runs for it (see `channels.sender`). A connection holds no task of
its own but its reader. When it ends, for any reason, it leaves the hub before its close
frame is sent.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import Counter
from contextlib import suppress
from typing import TYPE_CHECKING, Final, Protocol

import anyio

from channels.errors import ChannelsError, ServerClosing
from channels.publication import ClientInfo, Position
from channels.rules import Grant
from service.auth import Identity, seconds_left
from service.closecodes import CloseCode
from service.errors import InvalidToken, ProtocolError, RateLimited, RequestId
from service.keepalive import Quiet
from service.logs import fields, peer
from service.protocol import (
    Frame,
    History,
    HistoryEntry,
    HistoryReply,
    Ping,
    Pong,
    Presence,
    PresenceReply,
    Publish,
    PublishReply,
    Refresh,
    Reply,
    ServerPing,
    Subscribe,
    SubscribeReply,
    Unsubscribe,
    decode_request,
    encode,
    encode_error,
)
from service.websocket import WebSocketDisconnect, WebSocketState

if TYPE_CHECKING:
    from collections.abc import Callable

    from channels.connection import Connection
    from channels.encoding import Encoding
    from channels.hub import Hub, Subscribed
    from service.auth import Authenticator
    from service.framewriter import SocketFrameWriter, TransportFrameWriter
    from service.keepalive import KeepAlive
    from service.metrics import NodeCounters
    from service.protocol import ClientMessage
    from service.settings import ServerSettings
    from service.websocket import WebSocket

__all__ = (
    "CUT_OFF_CLOSE_SECONDS",
    "ClarionDoor",
    "Door",
    "Handler",
    "Session",
    "run_session",
)

#: How long a connection cut off at the end of a shutdown gets to take its close frame.
CUT_OFF_CLOSE_SECONDS: Final = 1.0
#: How long a connection whose transport broke waits for the server's disconnect (which
#: is under way by then) to learn its close code.
_DISCONNECT_WAIT_SECONDS: Final = 1.0

logger = logging.getLogger("clarion")

_PING = encode(ServerPing())
#: The close codes with which the server (hypercorn, `service.wsstream`) ends a connection
#: before the session hears of it: the session is told the code in the disconnect.
_FAILURES = frozenset(
    {CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_PAYLOAD, CloseCode.FRAME_TOO_LARGE}
)


class Handler(Protocol):
    """One connection's protocol state, as `run_session` drives it."""

    async def handle(self, frame: str | bytes) -> None:
        """Run the request in *frame* and queue what answers it (a request that ends the
        connection ends it with `channels.connection.Connection.end`)."""
        ...

    def ping(self) -> None:
        """Queue a ping: the client has been quiet for the door's ``quiet_seconds``."""
        ...


class Door(Protocol):
    """A wire protocol on the engine (Clarion's, Pusher's): what `run_session` needs of it
    to serve one of its WebSocket connections."""

    @property
    def encoding(self) -> Encoding | None:
        """The wire's encoding; None for the hub's own."""
        ...

    @property
    def quiet_seconds(self) -> float:
        """How long a client may send nothing before it is pinged (inf: never)."""
        ...

    def client(self, user: str | None) -> ClientInfo:
        """Who a new connection of *user* is in presence and events: a new id."""
        ...

    def open(self, connection: Connection, stop: anyio.CancelScope) -> Handler:
        """Start the protocol on a connection attached to the hub; *stop* ends it."""
        ...

    def close(self, code: int, reason: str) -> tuple[int, str]:
        """The close code and reason the wire says *code* (a `CloseCode`, or one its
        handler ended the connection with) with."""
        ...


class ClarionDoor:
    """Clarion's own protocol (docs/protocol.md) as a `Door`: each connection a `Session`."""

    __slots__ = ("_auth", "_errors", "_server", "quiet_seconds")
    encoding = None

    def __init__(
        self,
        server: ServerSettings,
        *,
        auth: Callable[[], Authenticator | None] = lambda: None,
        errors: Counter[int] | None = None,
    ) -> None:
        self._server = server
        self._auth = auth
        self._errors = errors
        self.quiet_seconds = server.ping_interval_seconds or math.inf

    def client(self, user: str | None) -> ClientInfo:
        return ClientInfo(secrets.token_hex(8), user)

    def open(self, connection: Connection, stop: anyio.CancelScope) -> Session:
        server = self._server
        return Session(
            connection,
            auth=self._auth,
            stop=stop,
            publish_rate=server.publish_rate_per_second or math.inf,
            publish_burst=server.publish_burst,
            errors=self._errors,
        )

    @staticmethod
    def close(code: int, reason: str) -> tuple[int, str]:
        return code, reason


class Session:
    """The protocol state of one connection: runs each request on its `Connection`.

    Replies and errors go into the same outbox as the channel messages, so a client sees
    them in the order they happened.
    """

    __slots__ = (
        "_auth",
        "_burst",
        "_errors",
        "_rate",
        "_refilled",
        "_tokens",
        "connection",
        "stop",
    )

    def __init__(
        self,
        connection: Connection,
        *,
        auth: Callable[[], Authenticator | None] = lambda: None,
        stop: anyio.CancelScope | None = None,
        publish_rate: float = math.inf,
        publish_burst: int = 1,
        errors: Counter[int] | None = None,
    ) -> None:
        self.connection = connection
        """Who it is (``connection.client``: its id in logs and presence, its user)."""
        self._auth = auth
        """The node's token checker now (a reload may replace it), None without auth."""
        self.stop = stop
        # A token bucket: *publish_burst* publishes at once, then *publish_rate* a second.
        self._rate = publish_rate
        self._burst = float(publish_burst)
        self._tokens = float(publish_burst)
        self._refilled = anyio.current_time()
        self._errors: Counter[int] = Counter() if errors is None else errors

    async def handle(self, frame: str | bytes) -> None:
        """Run the request in *frame*; reply with its result or a coded error.

        The reply is sent at once, with whatever else is waiting, not at the next tick.
        """
        try:
            request = decode_request(frame)
        except ProtocolError as exc:
            await self._refuse(exc, exc.request_id)
        else:
            try:
                reply = await self._run(request)
            except (ChannelsError, ProtocolError) as exc:
                await self._refuse(exc, request.id, getattr(request, "channel", None))
            else:
                if reply is not None:
                    await self.connection.send(encode(reply))
        self.connection.flush()

    def ping(self) -> None:
        """Queue a ``ping``: one at most is outstanding, and it may go beyond the
        outbox's capacity, as a reply may."""
        self.connection.send_now(_PING)
        self.connection.flush()

    async def _run(self, request: ClientMessage) -> Frame | None:
        """Run *request*; return its reply, or None when it was already queued."""
        connection = self.connection
        match request:
            case Publish(id=request_id, channel=channel, data=data, idempotency_key=key):
                self._take_publish_token()
                published = await connection.publish(channel, data, idempotency_key=key)
                position = published.position
                return PublishReply(
                    id=request_id,
                    channel=channel,
                    offset=position.offset,
                    epoch=position.epoch,
                    duplicate=published.duplicate,
                )
            case Subscribe(id=request_id, channel=channel, since=since, token=token):
                private_ok = self._subscription_token(token, channel)

                def reply(subscribed: Subscribed) -> None:
                    # The reply must precede the channel's messages, which the hub offers
                    # right after this returns: queue it now, even on a full outbox.
                    position = subscribed.position
                    connection.send_now(
                        encode(
                            SubscribeReply(
                                id=request_id,
                                channel=channel,
                                offset=position.offset,
                                epoch=position.epoch,
                                recovered=subscribed.recovered,
                            )
                        )
                    )

                start = None if since is None else Position(since.offset, since.epoch)
                await connection.subscribe(
                    channel, since=start, on_subscribed=reply, private_ok=private_ok
                )
                return None
            case Unsubscribe(id=request_id, channel=channel):
                connection.unsubscribe(channel)
                return Reply(id=request_id)
            case History(id=request_id, channel=channel, limit=limit, since=after, token=token):
                private_ok = self._subscription_token(token, channel)
                page = await connection.history(
                    channel, after=after, limit=limit, private_ok=private_ok
                )
                return HistoryReply(
                    id=request_id,
                    channel=channel,
                    offset=page.position.offset,
                    epoch=page.position.epoch,
                    messages=[HistoryEntry(item.offset, item.data) for item in page.publications],
                )
            case Presence(id=request_id, channel=channel, token=token):
                private_ok = self._subscription_token(token, channel)
                clients = await connection.presence(channel, private_ok=private_ok)
                return PresenceReply(id=request_id, channel=channel, clients=clients)
            case Refresh(id=request_id, token=token):
                self._refresh(token)
                return Reply(id=request_id)
            case Ping(id=request_id):
                return Reply(id=request_id)
            case Pong():
                return None

    async def _refuse(
        self, exc: ChannelsError | ProtocolError, request_id: RequestId, channel: str | None = None
    ) -> None:
        self._errors[exc.code] += 1
        if logger.isEnabledFor(logging.DEBUG):
            extra = fields(
                conn=self.connection.client.client, channel=channel, code=exc.code, reason=str(exc)
            )
            logger.debug("request refused", extra=extra)
        await self.connection.send(encode_error(exc.code, str(exc), request_id))

    def _subscription_token(self, token: str | None, channel: str) -> bool:
        """Check the subscription token a request shows for *channel*, if any; return
        whether it showed one (a ``private`` channel needs it).

        Raises:
            InvalidToken, TokenExpired: a token that is not for *channel* and this user.
        """
        if token is None:
            return False
        auth = self._auth()
        if auth is None:
            raise InvalidToken("this server does not use tokens")
        auth.verify_subscription(token, channel, self.connection.client.user)
        return True

    def _take_publish_token(self) -> None:
        now = anyio.current_time()
        elapsed, self._refilled = now - self._refilled, now
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        if self._tokens < 1:
            raise RateLimited(
                f"publishing faster than {self._rate:g} per second (burst {self._burst:g})"
            )
        self._tokens -= 1

    def _refresh(self, token: str) -> None:
        """Take a new token for this connection: same user, a later expiry."""
        auth = self._auth()
        if auth is None or self.stop is None:
            raise InvalidToken("this server does not use tokens")
        identity = auth.verify(token)
        if identity.user != self.connection.client.user:
            raise InvalidToken("the new token is for another user")
        self.stop.deadline = _deadline(identity)


def _deadline(identity: Identity | None) -> float:
    left = None if identity is None else seconds_left(identity)
    return math.inf if left is None else anyio.current_time() + left


async def run_session(
    ws: WebSocket,
    hub: Hub,
    server: ServerSettings,
    *,
    door: Door | None = None,
    identity: Identity | None = None,
    auth: Callable[[], Authenticator | None] = lambda: None,
    subprotocol: str | None = None,
    frames: TransportFrameWriter | SocketFrameWriter | None = None,
    counters: NodeCounters | None = None,
    writers: set[TransportFrameWriter | SocketFrameWriter] | None = None,
    keepalive: KeepAlive | None = None,
) -> None:
    """Serve one WebSocket until the client leaves or the node ends the connection.

    The connection speaks *door*'s protocol: Clarion's by default (a `ClarionDoor` with
    *auth*), whose close codes are given here; another door says them its way.
    With *frames* (see ``service.framewriter``) the connection's frames are written
    straight to its socket; without, they are sent through *ws*.

    Close codes: 1001 when the hub closes (after the queued messages were sent), 1009
    for a frame over ``server.max_request_bytes``, 4000 for a slow consumer, 4001 when
    the token of an authenticated connection expires (unless a ``refresh`` came first),
    4002 when a client quiet for the door's ``quiet_seconds`` was sent a ``ping`` and
    still sent nothing within ``server.pong_timeout_seconds`` (*keepalive* watches it;
    without one it is never pinged). A close is given
    ``server.write_timeout_seconds`` to be sent. Under hypercorn, the server itself
    closes a frame over that limit (1009) and a frame that breaks RFC 6455 (1002, or
    1007 for text that is not UTF-8; see `service.wsstream`), before the session hears
    of it: the disconnect carries the code, which is counted and logged as if the
    session had closed with it. The connection, its end and the errors it is answered
    with are counted in *counters*. *auth* gives the node's token checker as it is now
    (for ``refresh`` and subscription tokens). *frames* is taken out of *writers* once
    the connection has left the hub, before its close frame is sent (a drain cuts off
    the connections still in it).

    Raises:
        ServerClosing: if the hub is closing; the handshake was not accepted.
    """
    if hub.closing:
        raise ServerClosing
    user = None if identity is None else identity.user
    grant = None if identity is None else Grant(user, identity.channels)
    errors = None if counters is None else counters.errors
    if door is None:
        door = ClarionDoor(server, auth=auth, errors=errors)
    client = door.client(user)
    conn = client.client
    close: tuple[int, str] | None = None
    failed: CloseCode | None = None  # the code the server closed with before the session knew
    cut_off = False
    await ws.accept(subprotocol)
    logger.info("connection opened", extra=fields(conn=conn, client=peer(ws.client), user=user))
    if counters is not None:
        counters.accepted += 1
    # A slow consumer, a broken transport, or a closed connection that has sent
    # everything ends the connection at once, even while a send is blocked.
    stop = anyio.CancelScope(deadline=_deadline(identity))
    try:
        with hub.connect(
            ws,
            on_end=stop.cancel,
            client=client,
            grant=grant,
            frames=frames,
            encoding=door.encoding,
        ) as connection:
            handler = door.open(connection, stop)
            quiet = Quiet(keepalive, handler, stop, door.quiet_seconds, server.pong_timeout_seconds)
            # The reading loop is here rather than in a function of its own: a coroutine
            # frame less for each connection to hold while it waits.
            with stop, quiet:
                while True:
                    try:
                        # receive_frame in two halves: no coroutine of its own waits.
                        frame = ws.frame_of(await ws.next_message())
                    except WebSocketDisconnect as exc:
                        # The close code the server already failed the connection with
                        # (hypercorn, `service.wsstream`); None when the client left.
                        failed = CloseCode(exc.code) if exc.code in _FAILURES else None
                        break
                    quiet.heard = True  # the keep-alive looks (see service.keepalive)
                    # hypercorn enforces its own limit; this one holds under any server.
                    if _size(frame) > server.max_request_bytes:
                        close = (CloseCode.FRAME_TOO_LARGE, "frame too large")
                        break
                    await handler.handle(frame)
                    del frame  # not held while the connection waits for the next
        # The connection has left the hub: a drain no longer waits for it.
        if writers is not None and frames is not None:
            writers.discard(frames)
        if close is None and connection.failed:
            close = (CloseCode.SLOW_CONSUMER, "slow consumer")
        elif close is None and quiet.timed_out:
            close = (CloseCode.NO_PONG, "no pong")
        elif close is None and stop.cancelled_caught and anyio.current_time() >= stop.deadline:
            close = (CloseCode.TOKEN_EXPIRED, "token expired")
        elif close is None and connection.closed:
            ending = connection.ending
            if ending is None:
                close = (CloseCode.GOING_AWAY, "server shutting down")
            else:
                close = (ending.code, ending.reason)
        elif close is None and failed is None and stop.cancelled_caught:
            # The sender stopped the reader: the transport broke, or (with a frame
            # writer) the server's close frame was seen going out. The disconnect that
            # follows says whether the server failed the connection.
            failed = await _failure_of(ws)
    except ServerClosing:
        # The hub closed while the handshake was accepted: nothing was queued.
        close = (CloseCode.GOING_AWAY, "server shutting down")
    except anyio.get_cancelled_exc_class():
        # The server is cancelling the connection: under the plain hypercorn command it
        # does so on SIGTERM once its graceful_timeout is over. Say goodbye properly.
        close = (CloseCode.GOING_AWAY, "server shutting down")
        cut_off = True
        raise
    finally:
        # The connection has left the hub: nothing more is queued while the close frame
        # is sent.
        if writers is not None and frames is not None:
            writers.discard(frames)
        code = failed if close is None else close[0]
        reason = "client" if code is None else CloseCode.reason_of(code)
        if counters is not None:
            counters.disconnects[reason] += 1
        level = logging.WARNING if code is CloseCode.SLOW_CONSUMER else logging.INFO
        # The code as the client gets it (a door may say it its way).
        sent = code if code is None or close is None else door.close(*close)[0]
        extra = fields(conn=conn, client=peer(ws.client), user=user, code=sent, reason=reason)
        logger.log(level, "connection closed", extra=extra)
        if close is not None and ws.application_state is WebSocketState.CONNECTED:
            # A connection the server cuts off had its grace already: a moment for the
            # close frame, then it is dropped.
            bound = CUT_OFF_CLOSE_SECONDS if cut_off else server.write_timeout_seconds
            with anyio.move_on_after(bound, shield=True):
                with suppress(WebSocketDisconnect):  # the client is already gone
                    await ws.close(*door.close(*close))
        if cut_off and frames is not None:
            frames.abort()


async def _failure_of(ws: WebSocket) -> CloseCode | None:
    """The close code of the disconnect that ends *ws* if the server failed the
    connection with it (`_FAILURES`), else None; waits for it a moment at most."""
    with anyio.move_on_after(_DISCONNECT_WAIT_SECONDS):
        # ws.receive rather than receive_frame: after a failed send the application
        # side counts as disconnected, but the disconnect is still to be received.
        while ws.client_state is WebSocketState.CONNECTED:
            message = await ws.receive()  # a frame sent before the end: not wanted now
            if message["type"] == "websocket.disconnect":
                code: int = message["code"]
                return CloseCode(code) if code in _FAILURES else None
    return None


def _size(frame: str | bytes) -> int:
    """The size of *frame* in bytes (text frames count their UTF-8 encoding)."""
    if isinstance(frame, bytes) or frame.isascii():
        return len(frame)
    return len(frame.encode())
