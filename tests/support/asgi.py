"""Drive the Clarion ASGI app in memory: lifespan, HTTP requests and WebSockets."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from service.app import Clarion
from service.settings import Settings
from service.types import Message, Scope

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream


@asynccontextmanager
async def running_app(config: Settings | None = None) -> AsyncIterator[Clarion]:
    """Run the app's lifespan (startup, then shutdown on exit) around the block."""
    app = Clarion(config or Settings())
    to_app, app_inbox = anyio.create_memory_object_stream[Message](2)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](2)
    async with anyio.create_task_group() as tg, to_app, from_app:

        async def lifespan() -> None:
            with app_inbox, app_outbox:
                await app({"type": "lifespan"}, app_inbox.receive, app_outbox.send)

        tg.start_soon(lifespan)
        await to_app.send({"type": "lifespan.startup"})
        started = await from_app.receive()
        if started["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"startup failed: {started}")
        try:
            yield app
        finally:
            with anyio.fail_after(10, shield=True):
                await to_app.send({"type": "lifespan.shutdown"})
                stopped = await from_app.receive()
            if stopped["type"] != "lifespan.shutdown.complete":
                raise RuntimeError(f"shutdown failed: {stopped}")


def http_scope(
    method: str, target: str, headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    """The scope of an HTTP request for *target* (a path, with ``?query`` if any)."""
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": headers or [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def http_request(
    app: Clarion,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """Send one HTTP request to *app*; return status, headers and the decoded JSON body."""
    sent: list[Message] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(http_scope(method, path, headers), receive, send)
    start, response = sent
    response_headers = {key.decode(): value.decode() for key, value in start["headers"]}
    return start["status"], response_headers, msgspec.json.decode(response["body"])


class FakeClient:
    """The client end of an in-memory WebSocket to the app."""

    def __init__(
        self,
        to_app: anyio.abc.ObjectSendStream[Message],
        from_app: anyio.abc.ObjectReceiveStream[Message],
    ) -> None:
        self._to_app = to_app
        self._from_app = from_app
        self._pending: list[Any] = []
        self.frames = 0

    async def handshake(self) -> Message:
        """Send the connect message and return the app's answer (accept, close or denial)."""
        await self._to_app.send({"type": "websocket.connect"})
        return await self._from_app.receive()

    async def send_text(self, text: str) -> None:
        await self._to_app.send({"type": "websocket.receive", "text": text, "bytes": None})

    async def send_bytes(self, data: bytes) -> None:
        await self._to_app.send({"type": "websocket.receive", "bytes": data, "text": None})

    async def send_json(self, obj: Any) -> None:
        await self.send_text(msgspec.json.encode(obj).decode())

    async def disconnect(self, code: int = 1000) -> None:
        await self._to_app.send({"type": "websocket.disconnect", "code": code})

    async def stop_receiving(self) -> None:
        """Receive nothing more: the app's sends fail from now on, as on a broken socket."""
        await self._from_app.aclose()

    async def receive(self) -> Message:
        """Return the app's next ASGI message (a send or a close)."""
        return await self._from_app.receive()

    async def receive_frame(self) -> list[Any]:
        """Return the objects of the next data frame (one, or several if coalesced)."""
        message = await self._from_app.receive()
        if message["type"] != "websocket.send":
            raise AssertionError(f"expected a frame, got {message}")
        self.frames += 1
        decoded = msgspec.json.decode(message["text"])
        return decoded if isinstance(decoded, list) else [decoded]

    async def receive_object(self) -> Any:
        """Return the next object the app sent, whatever frame it came in."""
        if not self._pending:
            self._pending = await self.receive_frame()
        return self._pending.pop(0)

    async def request(self, obj: Any) -> Any:
        """Send a request and return the next object (its reply when nothing else is due)."""
        await self.send_json(obj)
        return await self.receive_object()


@asynccontextmanager
async def websocket(
    app: Clarion,
    path: str = "/ws",
    *,
    buffer: int = 1000,
    accept: bool = True,
    token: str | None = None,
) -> AsyncIterator[FakeClient]:
    """Open an in-memory WebSocket to *app*.

    Args:
        buffer: how many frames the app may send before a send blocks, as a full
            socket would block it.
        accept: complete the handshake and check that the app accepted.
        token: a JSON Web Token, offered as a browser would (subprotocols ``clarion``
            and ``bearer.<token>``).
    """
    to_app, app_inbox = anyio.create_memory_object_stream[Message](100)
    app_outbox, from_app = anyio.create_memory_object_stream[Message](buffer)
    subprotocols = [] if token is None else ["clarion", f"bearer.{token}"]
    headers = [(b"sec-websocket-protocol", ", ".join(subprotocols).encode())] if token else []
    scope = http_scope("GET", path, headers) | {
        "type": "websocket",
        "scheme": "ws",
        "subprotocols": subprotocols,
        "extensions": {"websocket.http.response": {}},
    }
    async with anyio.create_task_group() as tg, to_app, from_app:
        tg.start_soon(_run_app, app, scope, app_inbox, app_outbox)
        client = FakeClient(to_app, from_app)
        if accept:
            answer = await client.handshake()
            if answer["type"] != "websocket.accept":
                raise AssertionError(f"expected accept, got {answer}")
        yield client
        tg.cancel_scope.cancel()


async def _run_app(
    app: Clarion,
    scope: Scope,
    inbox: MemoryObjectReceiveStream[Message],
    outbox: MemoryObjectSendStream[Message],
) -> None:
    async def send(message: Message) -> None:
        # As the ASGI spec asks of servers: sending on a closed connection is an OSError.
        try:
            await outbox.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise OSError("the client has gone") from None

    with inbox, outbox:
        await app(scope, inbox.receive, send)
