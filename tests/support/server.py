"""Run Clarion under a real hypercorn, in-process, on 127.0.0.1 and a free port."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from service.app import Clarion
from service.runner import Backend, hypercorn_config, serve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from anyio.abc import ByteStream, Process

    from channels.hub import Hub
    from service.settings import ConfigSource, Settings
    from tests.support.tls import TLSFiles


@dataclass
class Server:
    """Where a Clarion server listens; *app* is set when it runs in this process."""

    host: str
    port: int
    websocket_path: str = "/ws"
    app: Clarion | None = None
    scheme: str = "ws"
    process: Process | None = None
    """The server's process, when the test started it as one."""

    @property
    def ws_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.websocket_path}"

    @property
    def hub(self) -> Hub:
        """The in-process server's hub."""
        if self.app is None or self.app.hub is None:
            raise RuntimeError("the server does not run in this process, or is not started")
        return self.app.hub


async def wait_listening(port: int, alive: Callable[[], bool] = lambda: True) -> None:
    """Return once 127.0.0.1:*port* accepts connections (while *alive* holds)."""
    while True:
        if not alive():
            raise AssertionError(f"the server for port {port} stopped before listening")
        try:
            probe = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            await anyio.sleep(0.02)  # not listening yet: poll the port
        else:
            await probe.aclose()
            return


async def wait_serving(port: int, alive: Callable[[], bool] = lambda: True) -> None:
    """Return once a Clarion server on 127.0.0.1:*port* answers ``GET /health`` (while
    *alive* holds).

    A listening port is not enough: ``clarion serve`` binds it before its app starts, and
    the kernel accepts connections meanwhile.
    """
    while True:
        if not alive():
            raise AssertionError(f"the server for port {port} stopped before serving")
        try:
            status, _ = await http_exchange(Server("127.0.0.1", port), "GET", "/health")
        except (OSError, anyio.BrokenResourceError, IndexError, ValueError):
            await anyio.sleep(0.02)  # not listening yet, or gone: poll the port
        else:
            if status == 200:
                return
            await anyio.sleep(0.02)


@asynccontextmanager
async def running_server(
    config: Settings,
    backend: Backend,
    port: int,
    *,
    tls: TLSFiles | None = None,
    source: ConfigSource | None = None,
) -> AsyncIterator[Server]:
    """Serve *config* with hypercorn's *backend* worker on 127.0.0.1:*port* (with *tls*,
    over TLS, as hypercorn's ``certfile`` and ``keyfile`` settings give it); *source* is
    where the app reloads its configuration from.

    On exit the server shuts down as on SIGTERM: clients are drained and closed with 1001.
    """
    server_config = msgspec.structs.replace(config.server, bind=f"127.0.0.1:{port}")
    app = Clarion(msgspec.structs.replace(config, server=server_config), source)
    settings = hypercorn_config(app.config)
    settings.errorlog = logging.getLogger("tests.hypercorn")
    if tls is not None:
        settings.certfile, settings.keyfile = tls.certfile, tls.keyfile
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, app, settings, backend, shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            await wait_listening(port)
        try:
            scheme = "ws" if tls is None else "wss"
            yield Server("127.0.0.1", port, config.server.websocket_path, app, scheme=scheme)
        finally:
            stop.set()


async def http_exchange(
    server: Server, method: str, path: str, body: bytes = b"", headers: str = ""
) -> tuple[int, bytes]:
    """Make one HTTP/1.1 request with a raw socket; return the status and the body.

    ``headers`` are extra header lines, each ending in CRLF.
    """
    request = (
        b"%s %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"%scontent-length: %d\r\nconnection: close\r\n\r\n%s"
        % (method.encode(), path.encode(), headers.encode(), len(body), body)
    )
    async with await anyio.connect_tcp(server.host, server.port) as stream:
        await stream.send(request)
        response = await receive_all(stream)
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), payload


async def receive_all(stream: ByteStream) -> bytes:
    """Read *stream* until the peer ends it (an HTTP/1.1 ``connection: close`` response)."""
    received = b""
    try:
        while True:
            received += await stream.receive()
    except anyio.EndOfStream:
        pass
    return received


async def http_call(
    server: Server, method: str, path: str, body: bytes = b"", headers: str = ""
) -> tuple[int, dict[str, Any]]:
    """Like `http_exchange`, with the body decoded from JSON."""
    status, payload = await http_exchange(server, method, path, body, headers)
    decoded: dict[str, Any] = msgspec.json.decode(payload)
    return status, decoded


async def http_publish(server: Server, channel: str, data: Any) -> dict[str, Any]:
    """POST /api/publish; return the decoded reply, which must be a success."""
    body = msgspec.json.encode({"channel": channel, "data": data})
    status, reply = await http_call(server, "POST", "/api/publish", body)
    assert status == 200, reply
    return reply
