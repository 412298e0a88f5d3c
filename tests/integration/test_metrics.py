"""``GET /metrics`` against a real hypercorn: Prometheus text that moves with the traffic."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.settings import ServerSettings, Settings
from tests.support.closelog import watch_closed_connections
from tests.support.rawframes import FIN, TEXT, client_frame, open_raw_websocket
from tests.support.server import Server, http_exchange, http_publish, running_server
from tests.support.wsclient import HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from service.runner import Backend


async def scrape(server: Server) -> dict[str, float]:
    """Every sample of ``GET /metrics``, by name and labels (``name{label="value"}``)."""
    status, body = await http_exchange(server, "GET", "/metrics")
    assert status == 200
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def test_metrics_follow_connections_messages_and_errors(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=ServerSettings(max_connections=3, flush_delay_seconds=0))
    with anyio.fail_after(15):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            before = await scrape(server)
            assert before["clarion_connections"] == 0
            assert before["clarion_broker_ready"] == 1
            assert before["clarion_draining"] == 0
            assert before["process_resident_memory_bytes"] > 0
            async with connect(server.ws_url) as alice, connect(server.ws_url) as bob:
                await subscribe(alice, "news")
                await subscribe(bob, "news")
                error = await alice.request({"type": "subscribe", "id": 9, "channel": "bad name"})
                assert error["code"] == 200
                for n in range(3):
                    await http_publish(server, "news", n)
                for client in (alice, bob):
                    assert [(await client.receive_object())["data"] for _ in range(3)] == [0, 1, 2]
                # Plain HTTP on the WebSocket endpoint: 426, code 107.
                status, _ = await http_exchange(server, "GET", "/ws")
                assert status == 426
                during = await scrape(server)
            assert during["clarion_connections"] == 2
            assert during["clarion_subscriptions"] == 2
            assert during["clarion_channels"] == 1
            assert during["clarion_connections_accepted_total"] == 2
            assert during["clarion_messages_published_total"] == 3
            assert during["clarion_messages_delivered_total"] == 6
            # Replies count as messages too: two subscribe replies and an error.
            assert during["clarion_messages_sent_total"] == 6 + 3
            frames = during["clarion_frames_sent_total"]
            assert 2 + 1 <= frames <= 6 + 3
            assert during["clarion_bytes_sent_total"] > 6 * len('{"type":"message"}')
            assert during['clarion_errors_total{code="200"}'] == 1
            assert during['clarion_errors_total{code="107"}'] == 1  # plain HTTP on /ws
            delays = during['clarion_send_delay_seconds_bucket{le="+Inf"}']
            assert 2 <= delays <= 6  # one per frame that held a channel message
            assert during["clarion_send_delay_seconds_count"] == delays
            after = await wait_for(server, "clarion_connections", 0)
            assert after['clarion_disconnects_total{reason="client"}'] == 2


async def test_refused_handshakes_are_counted_by_code(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=ServerSettings(max_connections=1))
    with anyio.fail_after(15):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url):
                with pytest.raises(HandshakeRefused) as refused:
                    async with connect(server.ws_url):
                        pass
                assert refused.value.status == 503
                samples = await scrape(server)
            assert samples['clarion_connections_refused_total{code="112"}'] == 1


async def wait_for(server: Server, name: str, value: float) -> dict[str, float]:
    """Scrape until *name* has *value* (the server notices a close a moment later)."""
    while True:
        samples = await scrape(server)
        if samples[name] == value:
            return samples
        await anyio.sleep(0.02)


async def test_connections_the_server_fails_are_counted_by_reason_not_as_client(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    """hypercorn closes these before the session hears of them (1002, 1007, 1009)."""
    config = Settings(server=ServerSettings(max_request_bytes=1024))
    violations = [
        client_frame(FIN | TEXT, b'{"type":"ping","id":1}', masked=False),  # 1002
        client_frame(FIN | TEXT, b'"\xff"'),  # 1007
        client_frame(FIN | TEXT, b"x" * 2000),  # 1009
    ]
    with anyio.fail_after(15), watch_closed_connections() as log:
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            for frame in violations:
                async with open_raw_websocket(
                    server.host, server.port, server.websocket_path
                ) as raw:
                    await raw.send(frame)
                    assert len(await raw.frames_until_end()) == 1  # the close frame
            await log.wait_for(len(violations))
            samples = await scrape(server)
    for reason in ("protocol_error", "invalid_payload", "frame_too_large"):
        assert samples[f'clarion_disconnects_total{{reason="{reason}"}}'] == 1, reason
    assert 'clarion_disconnects_total{reason="client"}' not in samples
