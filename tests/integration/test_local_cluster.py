"""``deploy/local-cluster`` run as the demo runs it: redis-server, three ``clarion serve``
nodes and HAProxy on 127.0.0.1, started and stopped by the script, which is stopped with a
signal. HAProxy and redis-server are required: without them the test fails with how to
install them, it never skips.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.support.redis import free_port
from tests.support.server import Server, http_call, http_publish, receive_all
from tests.support.wsclient import connect, subscribe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import Process

    from service.runner import Backend
    from tests.support.wsclient import Client

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local-cluster"
SUBSCRIBERS = 6
"""WebSockets opened through the balancer: two for each node, round robin."""


@asynccontextmanager
async def local_cluster(backend: Backend, log: Path) -> AsyncIterator[tuple[Process, Any]]:
    """Run ``deploy/local-cluster --json`` until the block ends; yield its process and the
    description it prints once the cluster serves (URLs, ports, PIDs)."""
    argv = [str(SCRIPT), "--port", str(free_port()), "--backend", backend, "--json"]
    env = {**os.environ, "CLARION_PYTHON": sys.executable}
    with log.open("wb") as errors:
        proc = await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=errors, env=env)
    try:
        if proc.stdout is None:
            raise RuntimeError("the script's stdout is not a pipe")
        try:
            line = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 1 << 16)
        except (anyio.IncompleteRead, anyio.EndOfStream):
            status = await proc.wait()
            pytest.fail(
                f"deploy/local-cluster exited with status {status} before the cluster "
                f"served:\n{await anyio.Path(log).read_text()}"
            )
        yield proc, json.loads(line)
    finally:
        if proc.returncode is None:
            proc.terminate()  # a failed test: the script stops its cluster
            with anyio.move_on_after(30, shield=True):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()  # its children get SIGKILL from the kernel (PR_SET_PDEATHSIG)
        await proc.aclose()


async def sessions_per_server(stats_port: int) -> dict[str, int]:
    """The sessions HAProxy holds open now to each server of backend ``nodes``."""
    async with await anyio.connect_tcp("127.0.0.1", stats_port) as stream:
        await stream.send(b"GET /;csv HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
        response = await receive_all(stream)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", head
    assert b"\r\ntransfer-encoding: chunked" in head.lower(), head
    lines = dechunk(body).decode().splitlines()
    header = lines[0].removeprefix("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return {
        row["svname"]: int(row["scur"])
        for row in rows
        if row["pxname"] == "nodes" and row["svname"] != "BACKEND"
    }


def dechunk(body: bytes) -> bytes:
    """The content of a chunked HTTP/1.1 body (HAProxy sends its statistics so)."""
    content = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return content
        content += body[:size]
        body = body[size + 2 :]  # the chunk's CRLF


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_subscribers_through_the_balancer_get_every_message_in_order(
    anyio_backend: Backend, tmp_path: Path, signum: signal.Signals
) -> None:
    log = tmp_path / "local-cluster.log"
    with anyio.fail_after(60):
        async with local_cluster(anyio_backend, log) as (proc, info):
            nodes = [Server("127.0.0.1", node["port"]) for node in info["nodes"]]
            async with AsyncExitStack() as stack:
                balanced: list[Client] = []
                for _ in range(SUBSCRIBERS):
                    balanced.append(await stack.enter_async_context(connect(info["ws_url"])))
                direct = [await stack.enter_async_context(connect(node.ws_url)) for node in nodes]
                for client in (*balanced, *direct):
                    await subscribe(client, "news")
                # Round robin, no stickiness: every node holds two of the six WebSockets.
                names = [node["name"] for node in info["nodes"]]
                expected = dict.fromkeys(names, SUBSCRIBERS // len(names))
                assert await sessions_per_server(info["stats_port"]) == expected
                balancer = Server("127.0.0.1", info["port"])
                assert await http_call(balancer, "GET", "/ready") == (200, {"status": "ready"})
                for index in range(5):
                    await http_publish(nodes[0], "news", index)
                for client in (*balanced, *direct):
                    got = [await client.receive_object() for _ in range(5)]
                    assert [message["data"] for message in got] == list(range(5))
                    assert [message["offset"] for message in got] == list(range(1, 6))
                proc.send_signal(signum)
                # The nodes drain and close their clients, through HAProxy for the balanced.
                for client in (*balanced, *direct):
                    closed = await client.wait_closed()
                    assert (closed.code, closed.reason) == (1001, "server shutting down")
            assert await proc.wait() == 0
    pids: dict[str, int] = info["pids"]
    assert sorted(pids) == ["haproxy", "node1", "node2", "node3", "redis-server"]
    assert [name for name, pid in pids.items() if running(pid)] == []
    assert not await anyio.Path(info["workdir"]).exists()
    assert f"{signum.name} received: stopping the cluster" in await anyio.Path(log).read_text()


@pytest.mark.parametrize(
    ("option", "hint"),
    [("--haproxy", "apt-get install haproxy"), ("--redis-server", "apt-get install redis-server")],
    ids=["haproxy", "redis-server"],
)
def test_a_missing_binary_exits_2_with_how_to_install_it(
    tmp_path: Path, option: str, hint: str
) -> None:
    argv = [str(SCRIPT), option, str(tmp_path / "missing"), "--port", str(free_port())]
    env = {**os.environ, "CLARION_PYTHON": sys.executable}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert hint in done.stderr
    assert done.stdout == ""
