"""Whole WebSocket frames written straight to the socket beneath hypercorn.

A frame sent through ASGI goes through hypercorn's WebSocket stream, wsproto, the HTTP/1.1
protocol and the server's send lock, with several awaits on the way: measured, about 20 µs
per frame on the asyncio worker and 45 µs on trio, where the socket write itself costs
7 µs. A message to 1,000 subscribers is 1,000 frames, one after the other. So, for a
WebSocket served by hypercorn over HTTP/1.1, `open_frame_writer` finds the transport
(asyncio) or the socket (trio) behind the ASGI ``send`` callable and returns a
`channels.sender.FrameWriter` that writes pre-framed text frames to it without waiting.

This relies on hypercorn's internals (checked with 0.17 and 0.18, tested on every run):
when anything is not as expected, `open_frame_writer` returns None and the connection
sends through ASGI as any app would. Frames stay whole and in order:

- asyncio: a frame goes to the transport in one ``write``, which queues what the kernel
  does not take; hypercorn writes its own frames (pongs, the close) the same way.
- trio: a frame goes to the socket in one non-blocking ``write``; what the kernel did
  not take is kept and written as the socket drains, before anything else. hypercorn's
  own sends on the connection are made to wait for it: its ``send`` is wrapped so that
  it first finishes our frame, and no frame of ours starts while one of its is under way.
- Neither writes once the WebSocket is closing: hypercorn's close frame (its answer to
  the client's, or ours) is seen going out.

Compression: hypercorn would agree to permessage-deflate with any client that offers it
(every browser does), and then every message would be compressed once per subscriber,
which costs more than the fan-out itself. `open_frame_writer` declines it;
docs/concepts.md says so.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Any

import anyio
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream

if TYPE_CHECKING:
    from hypercorn.events import Event

    from service.types import Send

__all__ = ("SocketFrameWriter", "TransportFrameWriter", "open_frame_writer", "text_frame")

_TEXT = 0x81  # FIN and the text opcode; a server's frames are not masked
_CLOSE = b"\x88"  # FIN and the close opcode
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
# The last payload framed, and its frame: a message fanned out to many connections is
# framed once (payloads are immutable, so the same object means the same frame).
_last: tuple[bytes, bytes] = (b"", b"\x81\x00")


def text_frame(payload: bytes) -> bytes:
    """Frame *payload* (UTF-8 text) as one unmasked WebSocket text frame (RFC 6455 5.2)."""
    global _last
    last_payload, frame = _last
    if payload is last_payload:
        return frame
    size = len(payload)
    if size < 126:
        frame = bytes((_TEXT, size)) + payload
    elif size < 1 << 16:
        frame = _HEADER_16.pack(_TEXT, 126, size) + payload
    else:
        frame = _HEADER_64.pack(_TEXT, 127, size) + payload
    _last = (payload, frame)
    return frame


def open_frame_writer(send: Send) -> TransportFrameWriter | SocketFrameWriter | None:
    """The frame writer of the hypercorn WebSocket behind *send*, before it is accepted.

    Declines permessage-deflate on that WebSocket. Returns None for anything else: another
    server, a WebSocket over HTTP/2, or TLS on trio (the socket carries ciphertext).
    """
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    stream.handshake.extensions = None  # decline compression (module docstring)
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    server = getattr(protocol.send, "__self__", None)
    writer = getattr(server, "writer", None)
    transport = getattr(writer, "transport", None)
    if transport is not None and hasattr(transport, "get_write_buffer_size"):
        return TransportFrameWriter(protocol, writer, transport)
    sock = getattr(getattr(server, "stream", None), "socket", None)
    lock = getattr(server, "send_lock", None)
    if sock is not None and lock is not None:
        return SocketFrameWriter(protocol, sock, lock)
    return None


class _Frames:
    """What both writers share: hypercorn's own sends on the connection are watched.

    Its HTTP/1.1 protocol's ``send`` is wrapped: a close frame passing through means no
    frame of ours may follow, and (trio) hypercorn's bytes wait for our unfinished frame.
    """

    __slots__ = ("_closing", "_rest", "_send", "_theirs", "_theirs_done")

    def __init__(self, protocol: H11Protocol) -> None:
        self._closing = False
        self._rest: memoryview | None = None
        self._theirs = 0  # hypercorn sends under way
        self._theirs_done: anyio.Event | None = None
        self._send = protocol.send
        protocol.send = self._send_after_ours

    def _check_open(self) -> None:
        if self._closing:
            raise anyio.BrokenResourceError("the WebSocket is closing")

    async def _finish(self) -> None:
        """Write the rest of our unfinished frame (trio)."""

    def abort(self) -> None:
        """Give up on the client: close the connection now, dropping what waits to be
        written to it.

        For a connection the server is cutting off: otherwise hypercorn would wait, as it
        closes the connection, until a client that stopped reading took the rest.
        """

    async def _send_after_ours(self, event: Event) -> None:
        """hypercorn's protocol's ``send``, after our unfinished frame (bound to the
        protocol in its place: a method rather than a closure costs an idle connection
        less)."""
        send = self._send
        if not isinstance(event, RawData):
            return await send(event)  # no bytes: nothing to order
        data = event.data
        if data[:1] == _CLOSE or (data[:5] == b"HTTP/" and data[9:10] != b"1"):
            # hypercorn's frames are whole: this is a close. Or an HTTP answer that is no
            # 101: the handshake was refused (hypercorn refuses bytes that come before its
            # answer, and then drops the app's accept), so no frame of ours may go out.
            self._closing = True
        if self._theirs == 0:
            self._theirs_done = anyio.Event()
        self._theirs += 1
        try:
            if self._rest is not None:
                try:
                    await self._finish()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # hypercorn's own send finds the connection broken
            await send(event)
        finally:
            self._theirs -= 1
            if self._theirs == 0 and self._theirs_done is not None:
                self._theirs_done.set()
                self._theirs_done = None


class TransportFrameWriter(_Frames):
    """Frames written to an asyncio transport (hypercorn's asyncio worker).

    The transport queues what the kernel does not take at once; it is writable while
    that queue is within its high-water mark.
    """

    __slots__ = ("_high_water", "_transport", "_writer")

    def __init__(self, protocol: H11Protocol, writer: Any, transport: Any) -> None:
        super().__init__(protocol)
        self._writer = writer  # asyncio.StreamWriter: waited on through drain()
        self._transport = transport
        self._high_water: int = transport.get_write_buffer_limits()[1]

    def writable(self) -> bool:
        """Whether the transport's queue is within its high-water mark.

        Raises:
            anyio.BrokenResourceError: if the connection or the WebSocket is closing.
        """
        transport = self._transport
        if self._closing or transport.is_closing():
            raise anyio.BrokenResourceError("the WebSocket is closing")
        return bool(transport.get_write_buffer_size() <= self._high_water)

    def write_nowait(self, payload: bytes) -> bool:
        """Write *payload* as one text frame; the transport queues what waits.

        Returns:
            Whether the transport's queue is still within its high-water mark.
        """
        transport = self._transport
        transport.write(text_frame(payload))
        return bool(transport.get_write_buffer_size() <= self._high_water)

    async def wait_writable(self) -> None:
        """Wait until the transport's queue is back under its low-water mark.

        Raises:
            anyio.BrokenResourceError: if the connection was lost.
        """
        try:
            await self._writer.drain()
        except Exception as exc:  # the stream's own error, whatever broke it
            raise anyio.BrokenResourceError("the connection was lost") from exc

    def abort(self) -> None:
        self._transport.abort()


class SocketFrameWriter(_Frames):
    """Frames written to a non-blocking socket (hypercorn's trio worker, no TLS).

    Args:
        protocol: hypercorn's HTTP/1.1 protocol, whose ``send`` is wrapped (see `_Frames`).
        sock: the socket (a trio socket: its ``close`` wakes whoever waits on it).
        lock: hypercorn's send lock, held while it sends.

    ``partial_writes`` counts the frames the kernel took only part of at first.
    """

    __slots__ = ("_fd", "_finishing", "_lock", "_socket", "partial_writes")

    def __init__(self, protocol: H11Protocol, sock: Any, lock: Any) -> None:
        super().__init__(protocol)
        self._socket = sock
        self._fd: int = sock.fileno()
        self._lock = lock
        self._finishing: anyio.Lock | None = None  # made once a frame is left unfinished
        self.partial_writes = 0

    def writable(self) -> bool:
        """Whether no frame of ours is unfinished and hypercorn is not sending.

        Raises:
            anyio.BrokenResourceError: if the WebSocket is closing.
        """
        self._check_open()
        return self._rest is None and not self._theirs and not self._lock.locked()

    def write_nowait(self, payload: bytes) -> bool:
        """Write *payload* as one text frame; keep what the kernel does not take.

        Returns:
            Whether the kernel took all of it; if not, `wait_writable` finishes it.

        Raises:
            anyio.BrokenResourceError: if the connection broke.
        """
        frame = text_frame(payload)
        try:
            written = os.write(self._fd, frame)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            raise anyio.BrokenResourceError("the connection broke") from exc
        if written < len(frame):
            self.partial_writes += 1
            self._rest = memoryview(frame)[written:]
            return False
        return True

    async def wait_writable(self) -> None:
        """Finish our unfinished frame as the socket drains, or wait for hypercorn's send.

        Raises:
            anyio.BrokenResourceError: if the connection broke or the WebSocket is closing.
        """
        while not self.writable():
            if self._rest is not None:
                await self._finish()
            elif self._theirs_done is not None:
                await self._theirs_done.wait()
            else:
                async with self._lock:  # a send begun before ours were wrapped
                    pass

    def abort(self) -> None:
        self._closing = True
        self._rest = None  # nothing more goes to this socket, nor to its fd's next owner
        self._socket.close()  # wakes whoever waits on it, with ClosedResourceError

    async def _finish(self) -> None:
        """Write the rest of our unfinished frame, waiting for the socket as needed."""
        if self._finishing is None:
            self._finishing = anyio.Lock()
        async with self._finishing:  # hypercorn's send and our task may both come here
            while self._rest is not None:
                try:
                    await anyio.wait_writable(self._fd)
                except anyio.ClosedResourceError:
                    raise anyio.BrokenResourceError("the connection was aborted") from None
                if self._closing and self._rest is None:  # aborted while waiting
                    raise anyio.BrokenResourceError("the connection was aborted")
                try:
                    written = os.write(self._fd, self._rest)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._rest = None
                    raise anyio.BrokenResourceError("the connection broke") from exc
                self._rest = self._rest[written:] if written < len(self._rest) else None
