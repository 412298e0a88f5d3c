"""Each limit reached against a real hypercorn: its exact error, others unaffected."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from service.settings import ServerSettings, Settings
from tests.support.server import running_server
from tests.support.wsclient import Client, HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from service.runner import Backend


def limited(**limits: Any) -> Settings:
    return Settings(server=ServerSettings(**limits))


async def refusal(url: str) -> tuple[int, int]:
    with pytest.raises(HandshakeRefused) as caught:
        async with connect(url):
            pass
    return caught.value.status, msgspec.json.decode(caught.value.body)["code"]


@pytest.mark.parametrize(
    ("limits", "status_code"),
    [
        ({"max_connections": 2}, (503, 112)),
        ({"max_connections_per_address": 2}, (429, 113)),
    ],
    ids=["per-node", "per-address"],
)
async def test_connections_beyond_the_limit_are_refused_until_one_leaves(
    anyio_backend: Backend, free_tcp_port: int, limits: dict[str, int], status_code: tuple[int, int]
) -> None:
    with anyio.fail_after(15):
        async with running_server(limited(**limits), anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as first:
                async with connect(server.ws_url):
                    assert await refusal(server.ws_url) == status_code
                    assert (await first.request({"type": "ping", "id": 1}))["id"] == 1
                while True:  # the server notices the close a moment later
                    try:
                        async with connect(server.ws_url) as again:
                            assert (await again.request({"type": "ping", "id": 2}))["id"] == 2
                            break
                    except HandshakeRefused:
                        await anyio.sleep(0.02)


async def test_subscriptions_beyond_the_limit_get_207(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(15):
        config = limited(max_subscriptions=2)
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as client, connect(server.ws_url) as other:
                await subscribe(client, "a")
                await subscribe(client, "b")
                reply = await client.request({"type": "subscribe", "id": 3, "channel": "c"})
                assert (reply["type"], reply["code"]) == ("error", 207)
                await subscribe(other, "c")
                await client.request({"type": "unsubscribe", "id": 4, "channel": "a"})
                await subscribe(client, "c")


async def test_publishing_faster_than_the_rate_gets_114(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(15):
        config = limited(publish_rate_per_second=0.5, publish_burst=3)
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as eager, connect(server.ws_url) as calm:
                for index in range(3):
                    reply = await eager.request(
                        {"type": "publish", "id": index, "channel": "c", "data": index}
                    )
                    assert reply["type"] == "reply"
                refused = await eager.request(
                    {"type": "publish", "id": 9, "channel": "c", "data": 9}
                )
                assert (refused["type"], refused["id"], refused["code"]) == ("error", 9, 114)
                other = await calm.request({"type": "publish", "id": 1, "channel": "c", "data": 1})
                assert other["type"] == "reply"


async def test_a_client_that_never_finishes_its_handshake_is_closed(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = limited(handshake_timeout_seconds=0.5, ping_interval_seconds=None)
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            opened = anyio.current_time()
            silent = await anyio.connect_tcp("127.0.0.1", free_tcp_port)
            dribbling = await anyio.connect_tcp("127.0.0.1", free_tcp_port)
            async with silent, dribbling, connect(server.ws_url) as client:
                await subscribe(client, "c")
                await dribbling.send(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: web")
                for stream in (silent, dribbling):
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await stream.receive()  # the server closes without a response
                # Closed by the timeout, not at once (the partial request was not refused).
                assert anyio.current_time() - opened >= 0.45
                # The WebSocket, open longer than the handshake timeout, still works.
                reply = await client.request({"type": "publish", "channel": "c", "data": 1})
                assert reply["type"] == "message"


async def test_a_client_that_answers_no_ping_is_closed_4002(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = limited(ping_interval_seconds=0.1, pong_timeout_seconds=1)
    pings = 0

    async def answer_pings(client: Client) -> None:
        nonlocal pings
        while True:
            assert await client.receive_object() == {"type": "ping"}
            pings += 1
            await client.send_json({"type": "pong"})

    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as answering, connect(server.ws_url) as silent:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(answer_pings, answering)
                    received, closed = await silent.receive_until_closed()
                    assert received == [{"type": "ping"}]
                    assert (closed.code, closed.reason) == (4002, "no pong")
                    assert pings >= 3  # about every 0.1 s for 1.1 s
                    assert server.hub.statistics().connections == 1
                    tg.cancel_scope.cancel()
