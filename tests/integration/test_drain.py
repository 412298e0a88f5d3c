"""SIGTERM to ``clarion serve``: not ready, no new clients, nothing owed lost, a bounded exit."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import anyio
import pytest

from tests.integration.test_commands import BIN, process
from tests.support.server import Server, http_call
from tests.support.wsclient import HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from pathlib import Path

    from service.runner import Backend

MESSAGES = 1000
PAYLOAD = "x" * 20_000  # 20 MB in all: more than a stalled client's kernel buffers hold
GRACE_SECONDS = 2.0


async def test_sigterm_drains_every_message_owed_and_exits_within_the_grace(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    config = tmp_path / "channels.yaml"
    config.write_text(
        f"server: {{bind: '127.0.0.1:{free_tcp_port}', shutdown_grace_seconds: {GRACE_SECONDS},"
        " outbox_messages: 10000, write_timeout_seconds: 60}\n"
    )
    argv = [str(BIN / "clarion"), "serve", "--config", str(config), "--backend", anyio_backend]
    with anyio.fail_after(40):
        async with process(argv, free_tcp_port, tmp_path / "log") as proc:
            server = Server("127.0.0.1", free_tcp_port)
            async with (
                connect(server.ws_url) as reader,
                connect(server.ws_url) as stalled,
                connect(server.ws_url) as publisher,
            ):
                await subscribe(reader, "news")
                await subscribe(stalled, "news")  # and never reads again
                for offset in range(1, MESSAGES + 1):
                    publish = {"type": "publish", "channel": "news", "data": PAYLOAD}
                    assert (await publisher.request(publish))["offset"] == offset
                proc.send_signal(signal.SIGTERM)
                started = anyio.current_time()
                status, ready = await http_call(server, "GET", "/ready")
                assert (status, ready["reason"]) == (503, "draining")
                with pytest.raises(HandshakeRefused) as refused:
                    async with connect(server.ws_url):
                        pass
                assert refused.value.status == 503
                # The reader, reading only now, gets every message before its 1001.
                received, closed = await reader.receive_until_closed()
                assert (closed.code, closed.reason) == (1001, "server shutting down")
                assert [item["offset"] for item in received] == list(range(1, MESSAGES + 1))
                assert await proc.wait() == 0
                took = anyio.current_time() - started
    # The stalled client held the drain up to the grace; then it was cut off: a second
    # for hypercorn to finish the others' closes, a second for its close frame.
    assert GRACE_SECONDS <= took < GRACE_SECONDS + 3.5
    assert "drained connections=3 left=1" in (tmp_path / "log").read_text()
