"""A real WebSocket client for the tests: the ``websockets`` package's protocol
implementation (handshake, framing, close) driven over an anyio TCP stream, so that one
client runs on asyncio and on trio alike.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator

    from anyio.abc import ByteStream


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status instead of a WebSocket."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


class Closed(Exception):
    """The server closed the WebSocket (``code`` is its close code)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class Client:
    """One WebSocket connection; `receive_object` flattens coalesced frames."""

    def __init__(self, stream: ByteStream, protocol: ClientProtocol) -> None:
        self._stream = stream
        self._protocol = protocol
        self._frames: list[Frame] = []
        self._pending: list[Any] = []
        self.frames_received = 0
        self.pongs: list[bytes] = []

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected."""
        return self._protocol.subprotocol

    @property
    def extensions(self) -> list[str]:
        """The names of the extensions the server agreed to."""
        return [extension.name for extension in self._protocol.extensions]

    async def send_ping(self, data: bytes) -> None:
        self._protocol.send_ping(data)
        await self._flush()

    async def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                await self._stream.send(data)

    async def send_text(self, text: str) -> None:
        self._protocol.send_text(text.encode())
        await self._flush()

    async def send_bytes(self, data: bytes) -> None:
        self._protocol.send_binary(data)
        await self._flush()

    async def send_json(self, obj: Any) -> None:
        await self.send_text(msgspec.json.encode(obj).decode())

    def take(self, frame: Frame) -> None:
        """Keep a frame the protocol parsed: data to be received, a pong to be counted."""
        if frame.opcode in {Opcode.TEXT, Opcode.BINARY}:
            self._frames.append(frame)
        elif frame.opcode is Opcode.PONG:
            self.pongs.append(bytes(frame.data))

    async def receive_frame(self) -> Frame:
        """Return the next data frame.

        Raises:
            Closed: when the server closed the connection instead.
        """
        while not self._frames:
            received = self._protocol.close_rcvd
            if received is not None:
                raise Closed(received.code, received.reason)
            if self._protocol.state is State.CLOSED:
                raise Closed(1006, "")  # the connection dropped without a close frame
            try:
                data = await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                self._protocol.receive_eof()
            else:
                self._protocol.receive_data(data)
            for event in self._protocol.events_received():
                if isinstance(event, Frame):
                    self.take(event)
            await self._flush()
        return self._frames.pop(0)

    async def receive_objects(self) -> list[Any]:
        """Return the objects of the next frame (several when the server coalesced)."""
        frame = await self.receive_frame()
        self.frames_received += 1
        decoded = msgspec.json.decode(frame.data)
        return decoded if isinstance(decoded, list) else [decoded]

    async def receive_object(self) -> Any:
        """Return the next object the server sent, whatever frame carried it."""
        if not self._pending:
            self._pending = await self.receive_objects()
        return self._pending.pop(0)

    async def request(self, obj: Any) -> Any:
        """Send *obj* and return the next object received (its reply, if nothing else is due)."""
        await self.send_json(obj)
        return await self.receive_object()

    async def code_of(self, obj: Any) -> int | None:
        """Send request *obj*: None if it is answered with a reply, else the error's code."""
        reply = await self.request(obj)
        return None if reply["type"] == "reply" else int(reply["code"])

    async def wait_closed(self) -> Closed:
        """Read (and discard) until the server closes; return how it closed."""
        return (await self.receive_until_closed())[1]

    async def receive_until_closed(self) -> tuple[list[Any], Closed]:
        """Read every object until the server closes; return them and how it closed."""
        received: list[Any] = []
        try:
            while True:
                received.append(await self.receive_object())
        except Closed as closed:
            return received, closed

    async def close(self, code: int = 1000) -> None:
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code)
            await self._flush()
            with anyio.move_on_after(5):
                await self.wait_closed()


@asynccontextmanager
async def connect(
    url: str,
    *,
    max_size: int | None = 2**24,
    subprotocols: list[str] | None = None,
    origin: str | None = None,
    compression: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Client]:
    """Open a WebSocket to *url* (``ws://127.0.0.1:PORT/path``, or ``wss://`` with
    *ssl_context*); with *compression*, offer permessage-deflate as browsers do.

    Raises:
        HandshakeRefused: if the server answers with an HTTP status.
    """
    uri = parse_uri(url)
    protocol = ClientProtocol(
        uri,
        max_size=max_size,
        subprotocols=[Subprotocol(name) for name in subprotocols] if subprotocols else None,
        origin=Origin(origin) if origin is not None else None,
        extensions=[ClientPerMessageDeflateFactory()] if compression else None,
    )
    stream: ByteStream
    if uri.secure:
        if ssl_context is None:
            raise ValueError(f"{url}: a wss:// URL needs an ssl_context")
        stream = await anyio.connect_tcp(
            uri.host, uri.port, ssl_context=ssl_context, tls_standard_compatible=False
        )
    else:
        stream = await anyio.connect_tcp(uri.host, uri.port)
    async with stream:
        protocol.send_request(protocol.connect())
        for data in protocol.data_to_send():
            await stream.send(data)
        response: Response | None = None
        early: list[Frame] = []  # frames that came in with the response
        while response is None:
            try:
                protocol.receive_data(await stream.receive())
            except anyio.EndOfStream:
                protocol.receive_eof()
            for event in protocol.events_received():
                if isinstance(event, Response):
                    response = event
                elif isinstance(event, Frame):
                    early.append(event)
        if response.status_code != 101:
            body = response.body or b""
            raise HandshakeRefused(response.status_code, bytes(body))
        # Accepted, and perhaps closed in the same breath (a refusal after the accept):
        # the frames that came with the response tell.
        client = Client(stream, protocol)
        for frame in early:
            client.take(frame)
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()


async def subscribe(client: Client, channel: str, **extra: Any) -> dict[str, Any]:
    reply: dict[str, Any] = await client.request(
        {"type": "subscribe", "id": channel, "channel": channel, **extra}
    )
    assert reply["type"] == "reply", reply
    return reply
