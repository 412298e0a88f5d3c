"""SIGTERM to ``clarion serve``: not ready, no new clients, nothing owed lost, a bounded exit."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from service.runner import AFTER_DRAIN_SECONDS
from service.session import CUT_OFF_CLOSE_SECONDS
from tests.integration.test_commands import BIN, process
from tests.support.server import Server, http_call
from tests.support.wsclient import HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from service.runner import Backend

GRACE_SECONDS = 3.0
PAYLOAD = "x" * 20_000
#: 6 MB owed to each client when SIGTERM comes. More than the kernel can buffer for a
#: client that reads nothing (checked below), so both still have messages queued in the
#: server: the stalled client's hold the drain up to the grace, and the reader's must be
#: sent before its close. And well within what a busy machine sends in the grace: a
#: backlogged connection gets one frame (``frame_max_bytes``, 64 KiB) per
#: ``flush_delay_seconds`` (5 ms), 13 MB/s at best; these 6 MB took the reader 0.4-0.7 s
#: with both cores busy. (The 20 MB this test once sent needed 1.5 s of a 2 s grace on a
#: quiet machine, and more than the grace on a busy one.)
MESSAGES = 300
#: How long the exit may take after the grace: hypercorn's moment for the last closes,
#: the cut-off client's moment for its close frame, and the process's own exit.
EXIT_SECONDS = AFTER_DRAIN_SECONDS + CUT_OFF_CLOSE_SECONDS + 1.5


def kernel_buffer_bytes() -> int:
    """The most the kernel holds of what a server sends to a client that reads nothing:
    the server's send buffer grown to its largest, the client's receive buffer as it
    starts (it grows only as the client reads)."""
    send_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    receive_start = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
    return send_max + receive_start


async def test_sigterm_drains_every_message_owed_and_exits_within_the_grace(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    owed_bytes = MESSAGES * len(PAYLOAD)
    assert owed_bytes > kernel_buffer_bytes() + 1_000_000, "raise MESSAGES (and the grace)"
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
                while status == 200:  # until the server has handled the signal
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
    # The stalled client held the drain up to the grace; then it was cut off.
    assert GRACE_SECONDS <= took < GRACE_SECONDS + EXIT_SECONDS
    assert "drained connections=3 left=1" in (tmp_path / "log").read_text()
