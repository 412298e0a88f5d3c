"""The Python client's transport: a client WebSocket over an anyio byte stream.

wsproto (sans-IO, already a dependency through hypercorn) frames and parses;
`connect_websocket` opens TCP, or TLS for ``wss://``, and performs the opening
handshake. A `ClientWebSocket` then has one reader (`ClientWebSocket.receive`, which
also answers the server's WebSocket pings and close) and one writer task
(`ClientWebSocket.run_writer`) that sends whatever was queued, in the order it was
queued. Senders never wait for one another: `ClientWebSocket.send` waits only while the
queue is over its bound, and `ClientWebSocket.send_nowait` never waits, so that the
reader can answer a ping or leave a channel without blocking.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Final, cast
from urllib.parse import urlsplit

import anyio
import msgspec
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from service.client.errors import (
    ConnectionClosed,
    ConnectionFailed,
    HandshakeRefused,
)
from service.closecodes import CloseCode

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anyio.abc import ByteStream
    from wsproto.events import Event

__all__ = (
    "ClientWebSocket",
    "Endpoint",
    "connect_websocket",
    "parse_url",
)

#: The most of an HTTP error body kept, to report why the upgrade was refused.
REFUSAL_BODY_MAX_BYTES: Final = 64 * 1024
_RECEIVE_BYTES: Final = 65536


class _ErrorBody(msgspec.Struct):
    code: int
    message: str


_error_body_decoder = msgspec.json.Decoder(_ErrorBody)


class Endpoint(msgspec.Struct, frozen=True):
    """Where a ``ws://`` or ``wss://`` URL points."""

    host: str
    port: int
    secure: bool
    host_header: str
    """``Host`` as the request sends it (with the port when the URL names one)."""
    target: str
    """The path and query string."""


def parse_url(url: str) -> Endpoint:
    """Split a WebSocket URL into what a connection needs.

    Raises:
        ValueError: if *url* is not a ``ws://`` or ``wss://`` URL with a host.
    """
    parts = urlsplit(url)
    if parts.scheme not in {"ws", "wss"} or not parts.hostname:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL with a host")
    secure = parts.scheme == "wss"
    try:
        port = parts.port or (443 if secure else 80)
    except ValueError:
        raise ValueError(f"{url!r} has an invalid port") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    return Endpoint(parts.hostname, port, secure, host_header, target)


class ClientWebSocket:
    """One open WebSocket: a reader, a writer task, and a queue between senders and it.

    Text frames out, whole messages in. The caller runs `run_writer` in a task group
    for as long as it uses the connection, calls `receive` from one task, and calls
    `aclose` at the end.
    """

    def __init__(
        self,
        stream: ByteStream,
        protocol: WSConnection,
        *,
        subprotocol: str | None,
        max_message_bytes: int,
        write_buffer_bytes: int,
    ) -> None:
        self.subprotocol = subprotocol
        """The subprotocol the server selected, if any."""
        self._stream = stream
        self._protocol = protocol
        self._max_message_bytes = max_message_bytes
        self._write_buffer_bytes = write_buffer_bytes
        self._outgoing = bytearray()
        self._queued = anyio.Event()
        self._room = anyio.Event()
        self._parts: list[str | bytes] = []
        self._size = 0
        self._closed: ConnectionClosed | None = None

    @property
    def closed(self) -> ConnectionClosed | None:
        """How the connection ended; None while it is open."""
        return self._closed

    def send_nowait(self, text: str) -> None:
        """Queue a text frame behind every frame queued before it; never wait.

        For small control traffic (pongs, leaving a channel) sent by the reader: it
        goes beyond the queue's bound, as the server lets replies go beyond an outbox.

        Raises:
            ConnectionClosed: if the connection has ended or is closing.
        """
        if self._closed is not None or self._protocol.state is not ConnectionState.OPEN:
            raise ConnectionClosed(*self._ending())
        self._queue(TextMessage(data=text))

    async def send(self, text: str) -> None:
        """Queue a text frame, first waiting while the queue holds more than its bound
        (``write_buffer_bytes``): the server reads slower than this side sends.

        Raises:
            ConnectionClosed: if the connection ends before the frame is queued.
        """
        if len(self._outgoing) < self._write_buffer_bytes:
            await anyio.lowlevel.checkpoint()
        while len(self._outgoing) >= self._write_buffer_bytes and self._closed is None:
            await self._room.wait()
        self.send_nowait(text)

    async def run_writer(self) -> None:
        """Send what is queued, in order, until cancelled or the connection breaks.

        A broken socket ends the connection (the reader's `receive` then raises
        `ConnectionClosed` with 1006) instead of raising here.
        """
        try:
            while True:
                await self._queued.wait()
                self._queued = anyio.Event()
                while self._outgoing:
                    data = bytes(self._outgoing)
                    self._outgoing.clear()
                    self._room.set()
                    self._room = anyio.Event()
                    await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            await self._lose(f"sending failed: {exc!r}")

    async def receive(self) -> str | bytes:
        """Return the next whole message; answer pings and the server's close.

        Raises:
            ConnectionClosed: once the connection has ended: the server's close code,
                1006 when it dropped without one, 1009 for a message over
                ``max_message_bytes`` (this side closes the connection then).
        """
        while True:
            for event in self._protocol.events():
                message = self._handle(event)
                if message is not None:
                    return message
            if self._closed is not None:
                raise ConnectionClosed(self._closed.code, self._closed.reason)
            try:
                data = await self._stream.receive(_RECEIVE_BYTES)
            except (
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                OSError,
            ):
                if self._closed is None:
                    self._protocol.receive_data(None)  # wsproto reports 1006
                continue
            self._protocol.receive_data(data)

    def _handle(self, event: Event) -> str | bytes | None:
        match event:
            case TextMessage(data=data) | BytesMessage(data=data):
                if self._closed is not None:
                    return None  # what follows a close is discarded
                part = bytes(data) if isinstance(data, bytearray) else data
                self._size += len(part)
                if self._size > self._max_message_bytes:
                    reason = f"a message over {self._max_message_bytes} bytes"
                    if self._protocol.state is ConnectionState.OPEN:
                        self._queue(CloseConnection(CloseCode.FRAME_TOO_LARGE, reason))
                    self._closed = ConnectionClosed(CloseCode.FRAME_TOO_LARGE, reason)
                    return None
                self._parts.append(part)
                if not event.message_finished:
                    return None
                parts, self._parts, self._size = self._parts, [], 0
                if len(parts) == 1:
                    return parts[0]
                # The parts of one message all have its type.
                if isinstance(part, str):
                    return "".join(cast("list[str]", parts))
                return b"".join(cast("list[bytes]", parts))
            case Ping():
                if self._protocol.state is ConnectionState.OPEN:
                    self._queue(event.response())
            case CloseConnection(code=code, reason=reason):
                if self._protocol.state is ConnectionState.REMOTE_CLOSING:
                    self._queue(event.response())
                if self._closed is None:
                    self._closed = ConnectionClosed(code, reason or "")
        return None

    def _queue(self, event: Event) -> None:
        self._outgoing += self._protocol.send(event)
        self._queued.set()

    def _ending(self) -> tuple[int, str]:
        if self._closed is not None:
            return self._closed.code, self._closed.reason
        return CloseCode.ABNORMAL, "the connection is closing"

    async def _lose(self, reason: str) -> None:
        if self._closed is None:
            self._closed = ConnectionClosed(CloseCode.ABNORMAL, reason)
        self._room.set()
        await anyio.aclose_forcefully(self._stream)  # wakes the reader

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Send what is queued and a close frame (unless the server closed first), wait
        for the server's close frame, and close the socket. Idempotent.

        Call it once the writer task has stopped. It waits as long as the caller lets
        it: bound it with ``anyio.move_on_after(..., shield=True)``.
        """
        try:
            if self._protocol.state is ConnectionState.OPEN:
                self._queue(CloseConnection(code, reason))
            if self._outgoing:
                data = bytes(self._outgoing)
                self._outgoing.clear()
                await self._stream.send(data)
            while self._protocol.state is ConnectionState.LOCAL_CLOSING:
                await self.receive()  # messages after our close are discarded
        except (ConnectionClosed, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            if self._closed is None:
                self._closed = ConnectionClosed(code, reason)
            self._room.set()
            await anyio.aclose_forcefully(self._stream)


async def connect_websocket(
    url: str,
    *,
    subprotocols: Sequence[str] = (),
    ssl_context: ssl.SSLContext | None = None,
    max_message_bytes: int,
    write_buffer_bytes: int,
) -> ClientWebSocket:
    """Open a WebSocket to *url* (``ws://`` over TCP, ``wss://`` over TLS).

    Waits for the TCP connection, the TLS handshake and the server's answer to the
    upgrade, for as long as the caller lets it (wrap it in ``anyio.fail_after``).

    Args:
        url: ``ws://HOST[:PORT]/PATH[?QUERY]`` or ``wss://...``.
        subprotocols: offered in ``Sec-WebSocket-Protocol``, in this order.
        ssl_context: for ``wss://``; the system's default trust store without one.
        max_message_bytes: a larger incoming message (text counted in characters)
            closes the connection with 1009.
        write_buffer_bytes: how much `ClientWebSocket.send` queues before it waits.

    Raises:
        ValueError: if *url* is not a ``ws://`` or ``wss://`` URL.
        ConnectionFailed: if the connection or TLS failed, or the peer did not answer
            as a WebSocket server; the cause is chained.
        HandshakeRefused: if the server answered with an HTTP error.
    """
    endpoint = parse_url(url)
    try:
        if endpoint.secure:
            context = ssl_context or ssl.create_default_context()
            stream: ByteStream = await anyio.connect_tcp(
                endpoint.host,
                endpoint.port,
                ssl_context=context,
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(endpoint.host, endpoint.port)
    except OSError as exc:
        # anyio's "All connection attempts failed" chains the reason of the last one.
        reason = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        raise ConnectionFailed(f"cannot connect to {url}: {reason}") from exc
    try:
        protocol = WSConnection(ConnectionType.CLIENT)
        request = Request(
            host=endpoint.host_header, target=endpoint.target, subprotocols=list(subprotocols)
        )
        await stream.send(protocol.send(request))
        accepted = await _read_handshake(stream, protocol)
    except BaseException as exc:
        await anyio.aclose_forcefully(stream)
        if isinstance(exc, RemoteProtocolError):
            raise ConnectionFailed(f"{url} did not answer as a WebSocket server: {exc}") from exc
        if isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError | OSError):
            raise ConnectionFailed(f"{url} closed the connection during the handshake") from exc
        raise
    return ClientWebSocket(
        stream,
        protocol,
        subprotocol=accepted.subprotocol,
        max_message_bytes=max_message_bytes,
        write_buffer_bytes=write_buffer_bytes,
    )


async def _read_handshake(stream: ByteStream, protocol: WSConnection) -> AcceptConnection:
    """Read the server's answer to the upgrade; frames that came with it stay queued in
    *protocol* for the reader.

    Raises:
        HandshakeRefused: for an HTTP error answer.
    """
    status = 0
    body = bytearray()
    answered = False  # the server sent something
    while True:
        try:
            data: bytes | None = await stream.receive(_RECEIVE_BYTES)
        except anyio.EndOfStream:
            data = None
        try:
            protocol.receive_data(data)
            # Lazily: frames that came with the answer stay queued for the reader.
            for event in protocol.events():
                match event:
                    case AcceptConnection():
                        return event
                    case RejectConnection(status_code=status, has_body=has_body):
                        if not has_body:
                            raise _refusal(status, bytes(body))
                    case RejectData(data=chunk, body_finished=finished):
                        body += chunk[: REFUSAL_BODY_MAX_BYTES - len(body)]
                        if finished:
                            raise _refusal(status, bytes(body))
        except RemoteProtocolError:
            # The stream ended inside the answer: keep a refusal's status if one came, and
            # tell a server that closed at once from one that answered something else.
            if data is None and status:
                raise _refusal(status, bytes(body)) from None
            if data is None and not answered:
                raise anyio.EndOfStream from None
            raise
        answered = True
        if data is None:
            raise anyio.EndOfStream


def _refusal(status: int, body: bytes) -> HandshakeRefused:
    try:
        error = _error_body_decoder.decode(body)
    except msgspec.DecodeError:
        text = body.decode(errors="replace").strip()[:200] or "no body"
        return HandshakeRefused(status, 0, text)
    return HandshakeRefused(status, error.code, error.message)
