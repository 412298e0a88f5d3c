"""The load generator's WebSocket client: blocking handshake, then raw frames.

It is deliberately minimal so that the generator is never the bottleneck: no
extensions, no fragmentation on send, a zero masking key (valid per RFC 6455 5.3, and
it spares XOR-ing every payload), and a parser that slices whole frames out of a
receive buffer.
"""

from __future__ import annotations

import base64
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = (
    "FrameParser",
    "HandshakeError",
    "SETUP_SECONDS",
    "client_frame",
    "handshake",
    "open_socket",
)

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class HandshakeError(Exception):
    """Raised when the server does not answer the upgrade with ``101``."""


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """Encode one final client frame with a zero masking key."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


#: How long a blocking step of setting up a connection may take before the run fails.
SETUP_SECONDS = 30.0


def open_socket(host: str, port: int) -> socket.socket:
    """Connect a TCP socket with Nagle's algorithm off, its blocking calls bounded by
    `SETUP_SECONDS` (until it is made non-blocking)."""
    sock = socket.create_connection((host, port), timeout=SETUP_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def handshake(sock: socket.socket, host: str, port: int, path: str) -> bytes:
    """Upgrade *sock* to a WebSocket (blocking); return bytes read past the response.

    Raises:
        HandshakeError: if the response is not ``101 Switching Protocols``.
    """
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise HandshakeError("the server closed the connection during the handshake")
        response += chunk
    head, _, rest = response.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise HandshakeError(f"the server answered {status.decode(errors='replace')!r}")
    return rest


class FrameParser:
    """Split a stream of server frames into messages (text and binary payloads)."""

    __slots__ = ("_buffer", "_partial", "close_code", "pings")

    def __init__(self, initial: bytes = b"") -> None:
        self._buffer = bytearray(initial)
        self._partial: bytearray | None = None
        self.close_code: int | None = None
        self.pings: list[bytes] = []
        """Payloads of pings received, for the owner to answer with pongs."""

    def messages(self, data: bytes | memoryview) -> list[bytes]:
        """Add received bytes; return the complete message payloads.

        What the load loop calls on every read: *data* that is one whole text frame,
        nothing left over before it, is the common case, and costs the least.
        """
        if not self._buffer and self._partial is None and len(data) >= 2:
            first, size = data[0], data[1]
            if first == 0x81 and size < 126 and len(data) == 2 + size:
                return [bytes(data[2:])]
            if first == 0x81 and size == 126 and len(data) >= 4:
                if len(data) == 4 + int.from_bytes(data[2:4], "big"):
                    return [bytes(data[4:])]
        return list(self.feed(data))

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        """Add received bytes; yield each complete message payload."""
        buffer = self._buffer
        buffer += data
        position = 0
        size = len(buffer)
        while size - position >= 2:
            first, second = buffer[position], buffer[position + 1] & 0x7F
            start = position + 2
            if second == 126:
                if size - position < 4:
                    break
                second = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif second == 127:
                if size - position < 10:
                    break
                second = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            end = start + second
            if end > size:
                break
            position = end
            opcode = first & 0x0F
            if opcode == OP_CLOSE:
                payload = bytes(buffer[start:end])
                self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
                continue
            if opcode == OP_PING:
                self.pings.append(bytes(buffer[start:end]))
                continue
            if opcode >= OP_CLOSE:
                continue  # a pong
            if opcode != OP_CONTINUATION and first & 0x80:
                yield bytes(buffer[start:end])
                continue
            # A fragmented message: collect until the final frame.
            if self._partial is None:
                self._partial = bytearray()
            self._partial += buffer[start:end]
            if first & 0x80:
                yield bytes(self._partial)
                self._partial = None
        del buffer[:position]
