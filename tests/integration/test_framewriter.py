"""Frames written straight to hypercorn's sockets (``service.framewriter``), on both workers
and on the asyncio worker with uvloop's event loop.

A small ASGI app of the test's own writes through `open_frame_writer` under a real
hypercorn; the client (the ``websockets`` protocol) checks every frame it gets.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import anyio
import hypercorn.asyncio
import hypercorn.config
import hypercorn.trio
import pytest

from service.framewriter import SocketFrameWriter, TransportFrameWriter, open_frame_writer
from service.settings import Settings
from service.websocket import WebSocket
from tests.support.server import running_server, wait_listening
from tests.support.tls import TLSFiles, self_signed
from tests.support.wsclient import Client, Closed, connect

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable
    from pathlib import Path

    from channels.sender import FrameWriter
    from service.runner import Backend
    from service.types import Message, Receive, Scope, Send


@pytest.fixture(scope="module", params=["asyncio", "trio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, bool]]:
    """This module runs on uvloop's event loop too (hypercorn's asyncio worker)."""
    if request.param == "uvloop":
        return ("asyncio", {"use_uvloop": True})
    return str(request.param)


@pytest.fixture
def worker(anyio_backend: str | tuple[str, dict[str, bool]]) -> Backend:
    """The hypercorn worker the test serves with."""
    return "uvloop" if isinstance(anyio_backend, tuple) else cast("Backend", anyio_backend)


class FrameApp:
    """Accept each WebSocket, then hand it and its frame writer to *script*."""

    def __init__(self, script: Callable[[WebSocket, FrameWriter], Awaitable[None]]) -> None:
        self.script = script
        self.writer: FrameWriter | None = None
        self.accepted = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message: Message = await receive()
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
            return
        ws = WebSocket(scope, receive, send)
        self.writer = writer = open_frame_writer(send)
        await ws.accept()
        self.accepted.set()
        if writer is not None:
            await self.script(ws, writer)
        else:
            await ws.receive()


@asynccontextmanager
async def serving(
    app: FrameApp, backend: Backend, port: int, tls: TLSFiles | None = None
) -> AsyncIterator[str]:
    """Serve *app* with hypercorn's *backend* worker on 127.0.0.1:*port* (with *tls*,
    over TLS); yield its URL."""
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    if tls is not None:
        config.certfile, config.keyfile = tls.certfile, tls.keyfile
    config.graceful_timeout = 1.0
    config.errorlog = logging.getLogger("tests.hypercorn")
    module: Any = hypercorn.trio if backend == "trio" else hypercorn.asyncio
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: module.serve(app, config, shutdown_trigger=stop.wait))
        await wait_listening(port)
        try:
            yield f"{'ws' if tls is None else 'wss'}://127.0.0.1:{port}/"
        finally:
            stop.set()


async def write(writer: FrameWriter, payload: bytes) -> None:
    """Write *payload* as soon as the socket takes it, and wait until it is written (as
    a `channels.sender.Sender` does)."""
    while not writer.writable():
        await writer.wait_writable()
    if not writer.write_nowait(payload):
        await writer.wait_writable()


SIZES = [0, 1, 125, 126, 127, 65535, 65536, 300_000]


def text(size: int) -> bytes:
    """*size* bytes of UTF-8 text, non-ASCII included."""
    return ("é" * (size // 2) + "a" * (size % 2)).encode()


async def test_hypercorn_websockets_get_a_frame_writer_and_frames_of_every_size_arrive(
    worker: Backend, free_tcp_port: int
) -> None:
    async def script(ws: WebSocket, writer: FrameWriter) -> None:
        for size in SIZES:
            await write(writer, text(size))
        # Until the client closes (if the app ended first, hypercorn's close of its own
        # could race the client's close: trio's BusyResourceError inside hypercorn).
        assert (await ws.receive())["type"] == "websocket.disconnect"

    app = FrameApp(script)
    with anyio.fail_after(20):
        async with serving(app, worker, free_tcp_port) as url, connect(url) as client:
            expected = SocketFrameWriter if worker == "trio" else TransportFrameWriter
            assert isinstance(app.writer, expected)
            for size in SIZES:
                frame = await client.receive_frame()
                assert frame.data == text(size)


async def test_a_client_that_reads_late_gets_whole_frames_in_order_then_the_close(
    worker: Backend, free_tcp_port: int
) -> None:
    """Frames pile up until the socket is full; the client pings then (hypercorn must
    answer between our frames, never inside one); an ASGI send and the close follow."""
    stuck = anyio.Event()
    pinged = anyio.Event()
    written = 0

    async def script(ws: WebSocket, writer: FrameWriter) -> None:
        nonlocal written
        payload = b"x" * 65_000
        while writer.write_nowait(b"%d:" % written + payload):  # until the socket is full
            written += 1
        written += 1
        stuck.set()
        await pinged.wait()
        for _ in range(5):
            await write(writer, b"%d:" % written + payload)
            written += 1
        await ws.send_text("through hypercorn")
        await ws.close(4000, "bye")

    app = FrameApp(script)
    with anyio.fail_after(30):
        async with serving(app, worker, free_tcp_port) as url, connect(url) as client:
            await stuck.wait()
            await client.send_ping(b"are you there")
            await anyio.wait_all_tasks_blocked()  # hypercorn has read it and waits to answer
            pinged.set()
            received, closed = await frames_until_closed(client)
            assert (closed.code, closed.reason) == (4000, "bye")
            assert received[:-1] == [b"%d:" % n + b"x" * 65_000 for n in range(written)]
            assert received[-1] == b"through hypercorn"
            assert client.pongs == [b"are you there"]
            if isinstance(app.writer, SocketFrameWriter):
                assert app.writer.partial_writes >= 1


async def frames_until_closed(client: Client) -> tuple[list[bytes], Closed]:
    """The payloads of every data frame until the server closes, and how it closed."""
    received = []
    while True:
        try:
            received.append(bytes((await client.receive_frame()).data))
        except Closed as closed:
            return received, closed


async def test_nothing_is_written_after_the_close(worker: Backend, free_tcp_port: int) -> None:
    refused = anyio.Event()

    async def script(ws: WebSocket, writer: FrameWriter) -> None:
        message = await ws.receive()
        assert message["type"] == "websocket.disconnect"
        with pytest.raises(anyio.BrokenResourceError):
            writer.writable()
        refused.set()

    app = FrameApp(script)
    with anyio.fail_after(20):
        async with serving(app, worker, free_tcp_port) as url, connect(url) as client:
            await client.close(1000)
            await refused.wait()


async def test_clarion_declines_compression_and_still_serves_the_client(
    worker: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with running_server(Settings(), worker, free_tcp_port) as server:
            async with connect(server.ws_url, compression=True) as client:
                assert client.extensions == []
                reply = await client.request({"type": "subscribe", "id": 1, "channel": "c"})
                assert reply["type"] == "reply"
                reply = await client.request({"type": "publish", "channel": "c", "data": "é"})
                assert reply == {"type": "message", "channel": "c", "offset": 1, "data": "é"}


async def test_over_tls_asyncio_writes_through_the_tls_transport_and_trio_leaves_it(
    worker: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    tls = self_signed(tmp_path)

    async def script(ws: WebSocket, writer: FrameWriter) -> None:
        for size in SIZES:
            await write(writer, text(size))
        assert (await ws.receive())["type"] == "websocket.disconnect"

    app = FrameApp(script)
    with anyio.fail_after(20):
        async with (
            serving(app, worker, free_tcp_port, tls) as url,
            connect(url, ssl_context=tls.client_context()) as client,
        ):
            await app.accepted.wait()
            if worker == "trio":
                # The socket carries ciphertext: the connection sends through hypercorn.
                assert app.writer is None
                return
            assert isinstance(app.writer, TransportFrameWriter)
            for size in SIZES:
                assert (await client.receive_frame()).data == text(size)


def test_other_servers_get_no_frame_writer() -> None:
    async def send(message: Message) -> None:
        pass

    assert open_frame_writer(send) is None
