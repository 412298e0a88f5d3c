"""The documented commands, run as real processes: ``clarion serve`` and ``hypercorn``."""

from __future__ import annotations

import os
import signal
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from tests.support.rawframes import FIN, TEXT, client_frame, close_of, open_raw_websocket
from tests.support.server import Server, http_publish, wait_serving
from tests.support.wsclient import connect, subscribe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from anyio.abc import Process

    from service.runner import Backend

BIN = Path(sys.executable).parent


@asynccontextmanager
async def process(
    argv: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Process]:
    """Run *argv* until the block ends; wait for it to serve on 127.0.0.1:*port*."""
    with log.open("wb") as output:
        proc = await anyio.open_process(
            argv, stdout=output, stderr=output, env={**os.environ, **(env or {})}
        )
    try:
        with anyio.fail_after(20):
            await wait_serving(port, alive=lambda: proc.returncode is None)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()  # only if a test failed before stopping it
        await proc.aclose()


async def _serve_publish_and_stop(
    server: Server, proc: Process, signum: signal.Signals = signal.SIGTERM
) -> None:
    """Subscribe, publish, send *signum*; the client gets its messages then close 1001."""
    async with connect(server.ws_url) as client:
        await subscribe(client, "news")
        for index in range(3):
            await http_publish(server, "news", index)
        proc.send_signal(signum)
        got = [await client.receive_object() for _ in range(3)]
        assert [message["data"] for message in got] == [0, 1, 2]
        closed = await client.wait_closed()
    assert (closed.code, closed.reason) == (1001, "server shutting down")
    assert await proc.wait() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_clarion_serve_drains_clients_on_a_signal(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path, signum: signal.Signals
) -> None:
    argv = [str(BIN / "clarion"), "serve", "--bind", f"127.0.0.1:{free_tcp_port}"]
    with anyio.fail_after(30):
        async with process(
            [*argv, "--backend", anyio_backend], free_tcp_port, tmp_path / "log"
        ) as proc:
            server = Server("127.0.0.1", free_tcp_port)
            await _serve_publish_and_stop(server, proc, signum)
    log = (tmp_path / "log").read_text()
    assert f"serving ws://127.0.0.1:{free_tcp_port}/ws on {anyio_backend}" in log
    assert f"{signum.name} received" in log


async def test_clarion_serve_on_uvloop_drains_clients(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    argv = [str(BIN / "clarion"), "serve", "--bind", f"127.0.0.1:{free_tcp_port}"]
    with anyio.fail_after(30):
        async with process([*argv, "--backend", "uvloop"], free_tcp_port, tmp_path / "log") as proc:
            await _serve_publish_and_stop(Server("127.0.0.1", free_tcp_port), proc)
    assert f"serving ws://127.0.0.1:{free_tcp_port}/ws on uvloop" in (tmp_path / "log").read_text()


async def test_hypercorn_command_serves_create_app(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    config = tmp_path / "channels.yaml"
    config.write_text("server:\n  websocket_path: /live\n")
    argv = [
        str(BIN / "hypercorn"),
        "service.app:create_app()",
        "-k",
        anyio_backend,
        "-b",
        f"127.0.0.1:{free_tcp_port}",
    ]
    env = {"CLARION_CONFIG": str(config)}
    with anyio.fail_after(30):
        async with process(argv, free_tcp_port, tmp_path / "log", env) as proc:
            server = Server("127.0.0.1", free_tcp_port, "/live")
            # The app fails a broken frame with a close frame here too (service.wsstream).
            async with open_raw_websocket(server.host, server.port, "/live") as raw:
                await raw.send(client_frame(FIN | TEXT, b"{}", masked=False))
                assert close_of(await raw.frames_until_end())[0] == 1002
            await _serve_publish_and_stop(server, proc)


async def test_hypercorn_with_two_workers_is_refused(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    argv = [
        str(BIN / "hypercorn"),
        "service.app:create_app()",
        "-k",
        anyio_backend,
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{free_tcp_port}",
    ]
    with anyio.fail_after(30), log.open("wb") as output:
        proc = await anyio.open_process(argv, stdout=output, stderr=output)
        try:
            await proc.wait()  # hypercorn stops every worker once one fails to start
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()
    assert "another worker of this server already runs one" in log.read_text()
