"""Run Clarion under a real hypercorn, in-process, on 127.0.0.1 and a free port."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import anyio
import msgspec

from channels.config import Config, ServerConfig
from service.app import Clarion
from service.runner import Backend, hypercorn_config, serve


@dataclass
class Server:
    app: Clarion
    host: str
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{self.app.config.server.websocket_path}"

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


@asynccontextmanager
async def running_server(config: Config, backend: Backend, port: int) -> AsyncIterator[Server]:
    """Serve *config* with hypercorn's *backend* worker on 127.0.0.1:*port*.

    On exit the server shuts down as on SIGTERM: clients are drained and closed with 1001.
    """
    server_config = msgspec.structs.replace(config.server, bind=f"127.0.0.1:{port}")
    app = Clarion(msgspec.structs.replace(config, server=server_config))
    settings = hypercorn_config(app.config)
    settings.errorlog = logging.getLogger("tests.hypercorn")
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, app, settings, backend, shutdown_trigger=stop.wait))
        with anyio.fail_after(10):
            while True:
                try:
                    probe = await anyio.connect_tcp("127.0.0.1", port)
                except OSError:
                    await anyio.sleep(0.01)  # not listening yet: poll the port
                else:
                    await probe.aclose()
                    break
        try:
            yield Server(app, "127.0.0.1", port)
        finally:
            stop.set()


def config_with(**server: object) -> Config:
    """The default configuration with some server options changed."""
    return Config(server=ServerConfig(**server))  # type: ignore[arg-type]
