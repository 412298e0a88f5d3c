"""A Python client for Clarion, on anyio: it runs on asyncio and on trio alike.

::

    async with open_client("ws://127.0.0.1:8000/ws") as client:
        async with client.subscribe("news") as news:
            await client.publish("news", {"text": "hi"})
            async for event in news:
                print(event)

`open_client` opens a WebSocket (wsproto over anyio TCP, or TLS for ``wss://``) and
owns the tasks that serve it; `Client.subscribe` is an async context manager that
yields a `Subscription`, a stream to iterate. Requests (`Client.publish`,
`Client.history`, `Client.presence`, `Client.refresh`, `Client.ping`) wait for their
reply and raise `ClarionError` (``code``, ``message``) for an error.

Reconnecting: after close codes 1001, 1006, 4000, 4001 and 4002, and after a connection
that fails, the client opens a new connection, waiting between attempts with capped
exponential backoff and full jitter (``backoff_initial_seconds`` doubling up to
``backoff_max_seconds``). After 4001 (token expired), and after a handshake refused
with 108, 109 or 110, it first calls ``get_token()`` for a new token. It then
subscribes again to every channel with ``since`` set to the last message it received,
so the messages missed in between arrive exactly once and in order (offsets it has
received already are dropped). Requests made while it is away wait for the new
connection; a request whose reply was lost with the connection raises
`ConnectionClosed`. Any other close code, or a refusal that cannot be fixed by
waiting, ends the client: its subscriptions and requests raise that error.

What a subscriber sees, in order: `Message` items, and notices as items of the same
stream, since the subscription goes on after them: `Gap` (messages the server dropped),
`Restart` (a new epoch), `NotRecovered` (a ``since`` that could not be replayed),
`Join` and `Leave`. A subscription that ends while the connection stays raises
`SubscriptionEnded` (the server's ``unsubscribed`` notice, a refused resubscription)
after the events received before it; `SlowSubscriber` (4000) when its bounded buffer
overflowed. The reader never waits for a subscriber: a full buffer ends that
subscription (the client unsubscribes), as the server ends a slow consumer.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from channels.errors import AlreadySubscribed
from channels.publication import ClientInfo, Position
from service.client.connector import (
    DEFAULT_BACKOFF_INITIAL_SECONDS,
    DEFAULT_BACKOFF_MAX_SECONDS,
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_WRITE_BUFFER_BYTES,
    Connector,
)
from service.client.errors import (
    ClarionError,
    ConnectionClosed,
    SlowSubscriber,
    SubscriptionEnded,
    clone_error,
)
from service.client.events import (
    ClientStatistics,
    Gap,
    HistoryPage,
    Join,
    Leave,
    Message,
    MessageFrame,
    ReplyFrame,
    decode_frames,
)
from service.client.subscription import Subscription
from service.closecodes import CloseCode
from service.protocol import (
    Error,
    Gap as GapFrame,
    History,
    Join as JoinFrame,
    Leave as LeaveFrame,
    Ping,
    Pong,
    Presence,
    Publish,
    Refresh,
    Restart as RestartFrame,
    ServerPing,
    Unsubscribe,
    Unsubscribed,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Awaitable, Callable

    from service.client.events import ServerFrame
    from service.client.websocket import ClientWebSocket

__all__ = (
    "CLOSE_TIMEOUT_SECONDS",
    "Client",
    "DEFAULT_BUFFER_EVENTS",
    "RECONNECT_CLOSE_CODES",
    "open_client",
)

logger = logging.getLogger(__name__)

#: Events a subscription holds for its consumer before it is ended as too slow.
DEFAULT_BUFFER_EVENTS: Final = 1024
#: How long leaving sends what is queued and waits for the server's close frame.
CLOSE_TIMEOUT_SECONDS: Final = 5.0
#: Close codes after which the client reconnects (4001 only with ``get_token``).
RECONNECT_CLOSE_CODES: Final = frozenset(
    (
        CloseCode.GOING_AWAY,
        CloseCode.ABNORMAL,
        CloseCode.SLOW_CONSUMER,
        CloseCode.TOKEN_EXPIRED,
        CloseCode.NO_PONG,
    )
)

_encoder = msgspec.json.Encoder()
_PONG: Final = _encoder.encode(Pong()).decode()


def _text(request: msgspec.Struct) -> str:
    return _encoder.encode(request).decode()


class _Call:
    """A request waiting for its reply."""

    __slots__ = ("done", "error", "reply")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.reply: ReplyFrame | None = None
        self.error: BaseException | None = None

    def settle(self, reply: ReplyFrame | None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.reply, self.error = reply, error
            self.done.set()


class Client:
    """A connection to a Clarion server that reconnects by itself; made by `open_client`.

    Its methods may be called from any number of tasks at once.
    """

    def __init__(self, connector: Connector, *, buffer_events: int, reconnect: bool) -> None:
        if buffer_events < 1:
            raise ValueError(f"buffer_events must be at least 1, not {buffer_events}")
        self.url = connector.url
        self._connector = connector
        self._buffer_events = buffer_events
        self._reconnect = reconnect
        self._websocket: ClientWebSocket | None = None
        self._changed = anyio.Event()
        self._error: ClarionError | None = None
        self._closing = False
        self._finished = False
        self._stopped = anyio.Event()
        self._run_scope = anyio.CancelScope()
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._subscribing: dict[int, tuple[Subscription, Position | None]] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._connections = self._frames = self._messages = 0
        self._duplicates = self._pongs = 0

    # Public API -----------------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self,
        channel: str,
        *,
        since: Position | None = None,
        token: str | None = None,
        buffer_events: int | None = None,
    ) -> AsyncIterator[Subscription]:
        """Subscribe to *channel* for the duration of the block; yield its stream.

        Waits for the server's reply (through reconnects); the block's end unsubscribes
        without waiting for the reply.

        Args:
            channel: the channel's name.
            since: the position of the last message seen (a `Message.position`, or a
                subscription's `Subscription.position`): the messages after it are
                replayed first, or a `NotRecovered` notice says they cannot be.
            token: a subscription token, for a ``private`` channel.
            buffer_events: this subscription's buffer (default: the client's).

        Raises:
            ClarionError: if the server refuses (201 channel not found, 202 permission
                denied, 207 too many subscriptions...), or 203 if this client is
                subscribed to *channel* already.
        """
        if channel in self._subscriptions:
            raise ClarionError(
                AlreadySubscribed.code, f"this client is subscribed to {channel!r} already"
            )
        self._check_open()
        subscription = Subscription(
            channel,
            since=since,
            token=token,
            buffer_events=buffer_events or self._buffer_events,
            on_overflow=self._overflowed,
        )
        self._subscriptions[channel] = subscription
        try:
            if self._websocket is not None:
                self._send_subscribe(self._websocket, subscription)
            await subscription._ready.wait()
            if not subscription._replied:  # refused, or the client ended first
                if subscription._error is not None:
                    raise clone_error(subscription._error)
                raise anyio.ClosedResourceError
            yield subscription
        finally:
            self._leave(subscription)
            subscription._end(None)
            subscription._receive.close()

    async def publish(
        self, channel: str, data: object, *, idempotency_key: str | None = None
    ) -> Position:
        """Publish *data* (any value msgspec encodes as JSON) on *channel*.

        With *idempotency_key*, a publish retried with the same key (after a 301 or a
        lost connection) is published once: a retry returns the first one's position.

        Returns:
            The message's position. A subscriber on this client receives it first.

        Raises:
            ClarionError: if the server refuses (201, 202, 205 message too large,
                208 invalid data, 114 rate limited, 301 broker unavailable...).
            ConnectionClosed: if the connection ended before the reply: the message
                may or may not have been published.
        """
        raw = msgspec.Raw(_encoder.encode(data))
        reply = await self._call(
            lambda rid: Publish(id=rid, channel=channel, data=raw, idempotency_key=idempotency_key)
        )
        return Position(reply.offset or 0, reply.epoch or "")

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: int | None = None,
        token: str | None = None,
    ) -> HistoryPage:
        """Read the messages *channel* keeps: the newest *limit* (all without), or with
        *since* the first *limit* after that offset; oldest first.

        Reading needs the access a subscribe needs; for a ``private`` channel, pass its
        subscription *token*.

        Raises:
            ClarionError: if the server refuses (201, 202, 301...).
        """
        reply = await self._call(
            lambda rid: History(id=rid, channel=channel, limit=limit, since=since, token=token)
        )
        epoch = reply.epoch or ""
        messages = [
            Message(channel, entry.offset, epoch, entry.data) for entry in reply.messages or ()
        ]
        return HistoryPage(channel, Position(reply.offset or 0, epoch), messages)

    async def presence(self, channel: str, *, token: str | None = None) -> list[ClientInfo]:
        """Return the clients subscribed to *channel*, on every node.

        Asking needs the access a subscribe needs; for a ``private`` channel, pass its
        subscription *token*.

        Raises:
            ClarionError: 206 if the channel's rule keeps no presence, 201, 202...
        """
        reply = await self._call(lambda rid: Presence(id=rid, channel=channel, token=token))
        return list(reply.clients or ())

    async def refresh(self, token: str) -> None:
        """Give the connection a new *token* (same user, later expiry); later
        connections use it too.

        Raises:
            ClarionError: 109 if it is not valid, or for another user.
        """
        await self._call(lambda rid: Refresh(id=rid, token=token))
        self._connector.token = token

    async def ping(self) -> None:
        """Make a round trip to the server (waiting for a connection first)."""
        await self._call(lambda rid: Ping(id=rid))

    def statistics(self) -> ClientStatistics:
        """Return the client's counters."""
        return ClientStatistics(
            connected=self._websocket is not None,
            connections=self._connections,
            failed_attempts=self._connector.failed_attempts,
            subscriptions=len(self._subscriptions),
            frames_received=self._frames,
            messages_received=self._messages,
            duplicates_dropped=self._duplicates,
            pongs_sent=self._pongs,
        )

    async def aclose(self) -> None:
        """Stop reconnecting and close the connection (1000); idempotent.

        Subscriptions end quietly; waiting requests raise ``anyio.ClosedResourceError``.
        """
        self._closing = True
        self._run_scope.cancel()
        await self._stopped.wait()

    # Requests -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._error is not None:
            raise clone_error(self._error)
        if self._closing or self._finished:
            raise anyio.ClosedResourceError

    async def _call(self, build: Callable[[int], msgspec.Struct]) -> ReplyFrame:
        """Send the request *build* makes for an id; wait for its reply.

        A request that could not be sent (the connection was closing) waits for the
        next connection; one sent fails with the connection (`ConnectionClosed`).
        """
        while True:
            websocket = self._open_websocket()
            while websocket is None:
                await self._changed.wait()
                websocket = self._open_websocket()
            request_id = next(self._ids)
            call = self._calls[request_id] = _Call()
            try:
                try:
                    await websocket.send(_text(build(request_id)))
                except ConnectionClosed:
                    continue  # never sent
                await call.done.wait()
            finally:
                del self._calls[request_id]
            if call.error is not None:
                raise call.error
            if call.reply is None:  # pragma: no cover - settle() gives one or the other
                raise RuntimeError("a request was settled without a reply or an error")
            return call.reply

    def _open_websocket(self) -> ClientWebSocket | None:
        """Return the current connection unless there is none or it is closing.

        Raises:
            ClarionError: the client's error, once it gave up.
            anyio.ClosedResourceError: once it was closed.
        """
        self._check_open()
        websocket = self._websocket
        return websocket if websocket is not None and websocket.closed is None else None

    def _send_subscribe(self, websocket: ClientWebSocket, subscription: Subscription) -> None:
        if subscription._sent_on is websocket:
            return
        subscription._sent_on = websocket
        request_id = next(self._ids)
        self._subscribing[request_id] = (subscription, subscription._seen)
        try:
            websocket.send_nowait(subscription._subscribe_request(request_id))
        except ConnectionClosed:
            pass  # it is sent again on the next connection

    def _leave(self, subscription: Subscription) -> None:
        """Forget *subscription* and unsubscribe, without waiting: a later subscribe to
        its channel is queued after the unsubscribe, so the server sees them in order."""
        if self._subscriptions.get(subscription.channel) is not subscription:
            return
        del self._subscriptions[subscription.channel]
        websocket = self._websocket
        if websocket is not None and subscription._sent_on is websocket:
            try:  # id None: the reply (or 204 if the server ended it already) is ignored
                websocket.send_nowait(_text(Unsubscribe(channel=subscription.channel)))
            except ConnectionClosed:
                pass  # the subscription ended with the connection

    def _overflowed(self, subscription: Subscription) -> None:
        self._leave(subscription)
        subscription._end(SlowSubscriber(subscription.channel, subscription.buffer_events))

    # The connection -------------------------------------------------------------------

    async def _run(self, websocket: ClientWebSocket) -> None:
        """Serve *websocket*, then each new connection, until closed or given up."""
        try:
            with self._run_scope:
                while True:
                    closed = await self._serve(websocket)
                    if not self._reconnect or closed.code not in RECONNECT_CLOSE_CODES:
                        raise closed
                    expired = closed.code == CloseCode.TOKEN_EXPIRED
                    if expired and not self._connector.fetches_tokens:
                        raise closed
                    logger.info("connection closed (%s); reconnecting", closed)
                    websocket = await self._connector.reconnect(fetch_token=expired)
        except ClarionError as exc:
            logger.info("the client gives up: %s", exc)  # raised to its callers
            self._end(exc)
        finally:
            self._end(None)
            self._stopped.set()

    async def _serve(self, websocket: ClientWebSocket) -> ConnectionClosed:
        """Read *websocket* until it closes; return how it closed."""
        self._connections += 1
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(websocket.run_writer)
                # Resubscribe before any request can use the connection, so that what
                # a request causes on a channel comes after the channel's replay.
                for subscription in list(self._subscriptions.values()):
                    subscription._active = False
                    self._send_subscribe(websocket, subscription)
                self._set_websocket(websocket)
                closed = await self._read(websocket)
                tg.cancel_scope.cancel()
        finally:
            self._set_websocket(None)
            self._subscribing.clear()
            for subscription in self._subscriptions.values():
                subscription._active = False
            with anyio.move_on_after(CLOSE_TIMEOUT_SECONDS, shield=True):
                await websocket.aclose()
            ended = websocket.closed or ConnectionClosed(CloseCode.ABNORMAL, "the client stopped")
            for call in () if self._closing else self._calls.values():
                call.settle(None, ConnectionClosed(ended.code, ended.reason))
        return closed

    def _set_websocket(self, websocket: ClientWebSocket | None) -> None:
        self._websocket = websocket
        self._changed.set()
        self._changed = anyio.Event()

    def _end(self, error: ClarionError | None) -> None:
        """Finish the client: with *error* when it gives up, quietly when closed."""
        if self._finished:
            return
        self._finished = True
        self._error = error
        for call in self._calls.values():
            call.settle(None, anyio.ClosedResourceError() if error is None else clone_error(error))
        for subscription in self._subscriptions.values():
            subscription._end(error)
        self._subscriptions.clear()
        self._changed.set()

    # What the server sends ------------------------------------------------------------

    async def _read(self, websocket: ClientWebSocket) -> ConnectionClosed:
        while True:
            try:
                text = await websocket.receive()
            except ConnectionClosed as closed:
                return closed
            self._frames += 1
            for frame in decode_frames(text):
                self._dispatch(frame, websocket)

    def _dispatch(self, frame: ServerFrame, websocket: ClientWebSocket) -> None:
        match frame:
            case MessageFrame(channel=channel):
                self._messages += 1
                subscription = self._active(channel)
                if subscription is not None and not subscription._on_message(frame):
                    self._duplicates += 1
            case ReplyFrame(id=request_id):
                self._on_reply(request_id, frame)
            case Error(id=request_id, code=code, message=message):
                self._on_error(request_id, code, message)
            case GapFrame(channel=channel, first=first, last=last):
                if (subscription := self._active(channel)) is not None:
                    subscription._offer(Gap(channel, first, last))
            case RestartFrame(channel=channel, epoch=epoch):
                if (subscription := self._active(channel)) is not None:
                    subscription._on_restart(epoch)
            case JoinFrame(channel=channel, info=info):
                if (subscription := self._active(channel)) is not None:
                    subscription._offer(Join(channel, info))
            case LeaveFrame(channel=channel, info=info):
                if (subscription := self._active(channel)) is not None:
                    subscription._offer(Leave(channel, info))
            case Unsubscribed(channel=channel, code=code, message=message):
                if (subscription := self._active(channel)) is not None:
                    del self._subscriptions[channel]  # the server has ended it
                    subscription._end(SubscriptionEnded(channel, code, message))
            case ServerPing():
                try:
                    websocket.send_nowait(_PONG)
                except ConnectionClosed:
                    pass
                else:
                    self._pongs += 1

    def _active(self, channel: str) -> Subscription | None:
        subscription = self._subscriptions.get(channel)
        return subscription if subscription is not None and subscription._active else None

    def _on_reply(self, request_id: int | str | None, reply: ReplyFrame) -> None:
        if not isinstance(request_id, int):
            return  # an unsubscribe's: nothing waits for it
        call = self._calls.get(request_id)
        if call is not None:
            call.settle(reply)
            return
        subscribing = self._subscribing.pop(request_id, None)
        if subscribing is not None:
            subscription, since = subscribing
            if self._subscriptions.get(subscription.channel) is subscription:
                subscription._on_subscribed(reply, since)

    def _on_error(self, request_id: int | str | None, code: int, message: str) -> None:
        if not isinstance(request_id, int):
            logger.debug("error %d for no waiting request: %s", code, message)
            return
        call = self._calls.get(request_id)
        if call is not None:
            call.settle(None, ClarionError(code, message))
            return
        subscribing = self._subscribing.pop(request_id, None)
        if subscribing is None:
            return  # its subscribe block has ended
        subscription = subscribing[0]
        if self._subscriptions.get(subscription.channel) is subscription:
            # The server holds no subscription now: nothing to unsubscribe.
            del self._subscriptions[subscription.channel]
            if subscription._replied:  # a resubscription after a reconnect
                subscription._end(SubscriptionEnded(subscription.channel, code, message))
            else:
                subscription._end(ClarionError(code, message))


@asynccontextmanager
async def open_client(
    url: str,
    *,
    token: str | None = None,
    get_token: Callable[[], Awaitable[str]] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    buffer_events: int = DEFAULT_BUFFER_EVENTS,
    reconnect: bool = True,
    backoff_initial_seconds: float = DEFAULT_BACKOFF_INITIAL_SECONDS,
    backoff_max_seconds: float = DEFAULT_BACKOFF_MAX_SECONDS,
    connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    write_buffer_bytes: int = DEFAULT_WRITE_BUFFER_BYTES,
) -> AsyncIterator[Client]:
    """Connect to a Clarion server; serve the connection (and reconnect) until the
    block ends, then close it.

    Waits for the first connection; a failure to open it is raised at once, without
    retrying. The block's end stops reconnecting and closes the WebSocket (1000),
    waiting at most ``CLOSE_TIMEOUT_SECONDS`` for the close handshake.

    Args:
        url: ``ws://HOST:PORT/PATH`` (``clarion serve``: ``ws://127.0.0.1:8000/ws``),
            or ``wss://`` for TLS.
        token: a JSON Web Token, offered as the ``bearer.<token>`` subprotocol.
        get_token: an async function returning a new token: called first when there
            is no *token*, and before reconnecting after 4001 or a refused token.
        ssl_context: for ``wss://``: the system's trust store without one.
        buffer_events: the events each subscription holds for its consumer.
        reconnect: False ends the client at the first close instead.
        backoff_initial_seconds, backoff_max_seconds: the wait before a reconnect is
            random, up to the first value doubled per failed attempt, at most the second.
        connect_timeout_seconds: for TCP, TLS and the upgrade, per attempt.
        max_message_bytes: a larger incoming message (text counted in characters)
            ends the client (close 1009).
        write_buffer_bytes: outgoing bytes queued before requests wait.

    Raises:
        ValueError: for a URL that is not ``ws://`` or ``wss://``.
        HandshakeRefused: if the server refuses the connection (108-113...).
        ConnectionFailed: if no connection could be opened.
    """
    connector = Connector(
        url,
        token=token,
        get_token=get_token,
        ssl_context=ssl_context,
        backoff_initial_seconds=backoff_initial_seconds,
        backoff_max_seconds=backoff_max_seconds,
        connect_timeout_seconds=connect_timeout_seconds,
        max_message_bytes=max_message_bytes,
        write_buffer_bytes=write_buffer_bytes,
    )
    client = Client(connector, buffer_events=buffer_events, reconnect=reconnect)
    websocket = await connector.open()
    single: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(client._run, websocket)
            try:
                yield client
            finally:
                client._closing = True
                client._run_scope.cancel("the client is closing")
    except BaseExceptionGroup as group:
        # The caller sees its own exception, not the group our task group made of it.
        if len(group.exceptions) != 1:
            raise
        single = group.exceptions[0]
    if single is not None:
        raise single
