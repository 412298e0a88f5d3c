"""A scripted WebSocket server: the test plays Clarion's side frame by frame.

A real Clarion never sends a duplicate, a message before its subscribe reply, or a
``gap``, ``restart`` or ``unsubscribed`` notice on demand; this server sends whatever the
test tells it to, so that the client's handling of each is checked deterministically.
It is the ``websockets`` package's sans-IO protocol over anyio sockets (as
``tests/support/wsclient.py`` is for clients), so it runs on asyncio and on trio.

The handshake of each connection waits for the test's `ScriptedServer.accept`: until
then the client stays ``connecting``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
from anyio.abc import SocketAttribute
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import SocketStream
    from anyio.streams.memory import MemoryObjectReceiveStream

__all__ = ("ScriptedConnection", "ScriptedServer", "scripted_server")

#: How long a closing client may take to answer the close frame.
CLOSE_SECONDS: Final = 5.0


class ScriptedConnection:
    """One client connection, driven by the test."""

    def __init__(self, stream: SocketStream, protocol: ServerProtocol, request: Request) -> None:
        self._stream = stream
        self._protocol = protocol
        self._request = request
        self._objects: list[Any] = []
        self.finished = anyio.Event()
        """Set when the test is done with the connection: its socket then closes."""

    async def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                await self._stream.send(data)

    async def accept(self) -> None:
        """Answer the handshake: the client's socket opens (with subprotocol clarion)."""
        self._protocol.send_response(self._protocol.accept(self._request))
        await self._flush()

    async def send(self, frame: Any) -> None:
        """Send *frame* (an object, or a list of objects: a coalesced frame) as JSON."""
        self._protocol.send_text(msgspec.json.encode(frame))
        await self._flush()

    async def receive(self) -> Any:
        """Return the next JSON object the client sent."""
        while not self._objects:
            try:
                self._protocol.receive_data(await self._stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                self._protocol.receive_eof()
            for event in self._protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    self._objects.append(msgspec.json.decode(event.data))
            await self._flush()
            if not self._objects and self._protocol.state is State.CLOSED:
                raise AssertionError("the client closed the connection")
        return self._objects.pop(0)

    async def close(self, code: int, reason: str = "") -> None:
        """Close with *code*, wait for the client's close frame, then drop the socket
        (the server closes TCP first)."""
        self._protocol.send_close(code, reason)
        await self._flush()
        with anyio.move_on_after(CLOSE_SECONDS):
            while self._protocol.close_rcvd is None and self._protocol.state is not State.CLOSED:
                try:
                    self._protocol.receive_data(await self._stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    self._protocol.receive_eof()
                self._protocol.events_received()
                await self._flush()
        self.finished.set()


class ScriptedServer:
    """Where the scripted server listens, and the connections waiting for `accept`."""

    def __init__(self, url: str, handshakes: MemoryObjectReceiveStream[ScriptedConnection]) -> None:
        self.url = url
        self._handshakes = handshakes

    async def accept(self) -> ScriptedConnection:
        """Wait for the next client handshake and accept it."""
        connection = await self._handshakes.receive()
        await connection.accept()
        return connection


@asynccontextmanager
async def scripted_server() -> AsyncIterator[ScriptedServer]:
    """Listen on 127.0.0.1 for the duration of the block; yield the server (its ``url`` is
    ``ws://127.0.0.1:PORT/ws``)."""
    send, receive = anyio.create_memory_object_stream[ScriptedConnection](8)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)

    async def handshake(stream: SocketStream) -> None:
        async with stream:
            protocol = ServerProtocol(subprotocols=[Subprotocol("clarion")])
            request: Request | None = None
            while request is None:
                try:
                    protocol.receive_data(await stream.receive())
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                for event in protocol.events_received():
                    if isinstance(event, Request):
                        request = event
            connection = ScriptedConnection(stream, protocol, request)
            await send.send(connection)
            await connection.finished.wait()

    async with listener, send, receive, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handshake)
        try:
            yield ScriptedServer(f"ws://127.0.0.1:{port}/ws", receive)
        finally:
            tg.cancel_scope.cancel()
