"""A WebSocket client that writes raw bytes: for frames no real client would send.

The handshake is made by hand over an anyio TCP stream; after it, the test writes
whatever bytes it likes (`client_frame` builds frames, masked or not, with any first
byte) and reads the server's frames, up to the end of the TCP connection.
"""

from __future__ import annotations

import base64
import os
import struct
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NamedTuple

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import ByteStream

__all__ = ("RawWebSocket", "ServerFrame", "client_frame", "close_of", "open_raw_websocket")

FIN = 0x80
RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ServerFrame(NamedTuple):
    """One frame the server sent: its first byte (FIN, RSV bits, opcode) and payload."""

    head: int
    payload: bytes

    @property
    def opcode(self) -> int:
        return self.head & 0x0F


def client_frame(head: int, payload: bytes = b"", *, masked: bool = True) -> bytes:
    """A frame with first byte *head* (FIN, RSV bits and opcode, taken as given) and
    *payload*, masked as a client's must be unless *masked* is False (RFC 6455 5.2)."""
    size = len(payload)
    mask_bit = 0x80 if masked else 0
    if size < 126:
        header = bytes((head, mask_bit | size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", head, mask_bit | 126, size)
    else:
        header = struct.pack("!BBQ", head, mask_bit | 127, size)
    if not masked:
        return header + payload
    key = os.urandom(4)
    masked_payload = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    return header + key + masked_payload


class RawWebSocket:
    """A WebSocket connection the test writes raw bytes to, and reads frames from."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._received = b""

    async def send(self, data: bytes) -> None:
        """Write *data* as it is: one frame, several, or a part of one."""
        await self._stream.send(data)

    async def receive_frame(self) -> ServerFrame:
        """Return the next frame the server sent.

        Raises:
            anyio.EndOfStream: if the server ended the connection first.
        """
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            self._received += await self._stream.receive()

    async def frames_until_end(self) -> list[ServerFrame]:
        """Read until the server ends the TCP connection (a FIN or a reset); return every
        whole frame it sent until then.

        Raises:
            AssertionError: if the bytes received end inside a frame.
        """
        try:
            while True:
                self._received += await self._stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
        frames = []
        while (frame := self._take_frame()) is not None:
            frames.append(frame)
        if self._received:
            raise AssertionError(f"a frame cut short: {self._received!r}")
        return frames

    def _take_frame(self) -> ServerFrame | None:
        received = self._received
        if len(received) < 2:
            return None
        head, size = received[0], received[1] & 0x7F
        offset = 2
        if size == 126 and len(received) >= 4:
            (size,) = struct.unpack_from("!H", received, offset)
            offset += 2
        elif size == 127 and len(received) >= 10:
            (size,) = struct.unpack_from("!Q", received, offset)
            offset += 8
        elif size >= 126:
            return None
        if len(received) < offset + size:
            return None
        self._received = received[offset + size :]
        return ServerFrame(head, received[offset : offset + size])


@asynccontextmanager
async def open_raw_websocket(host: str, port: int, path: str) -> AsyncIterator[RawWebSocket]:
    """Open a WebSocket to ``ws://host:port/path`` with a handshake made by hand."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nupgrade: websocket\r\n"
        f"connection: Upgrade\r\nsec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n\r\n"
    )
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive()
        status_line, _, rest = head.partition(b"\r\n\r\n")
        if not status_line.startswith(b"HTTP/1.1 101 ") or rest:
            raise AssertionError(f"the handshake failed: {head!r}")
        yield RawWebSocket(stream)


def close_of(frames: list[ServerFrame]) -> tuple[int, str]:
    """The code and reason of the close frame that ends *frames*.

    Raises:
        AssertionError: if the last frame is not a close frame, or frames follow it.
    """
    if not frames or frames[-1].opcode != CLOSE:
        raise AssertionError(f"the connection ended without a close frame: {frames}")
    payload = frames[-1].payload
    (code,) = struct.unpack_from("!H", payload)
    return code, payload[2:].decode()
