"""Clarion mounted in a FastAPI app, under hypercorn on both workers: the host's routes
drive it in process (``app.api``), its clients connect under the mount's path."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import hypercorn.asyncio
import hypercorn.config
import hypercorn.trio
import msgspec
import pytest
from fastapi import FastAPI

from channels.config import ChannelRule
from service.app import Clarion
from service.settings import AuthSettings, Settings
from tests.support.auth import SECRET, token
from tests.support.docs import DOCS, code_block
from tests.support.server import Server, http_call, http_exchange, wait_listening
from tests.support.wsclient import HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from service.runner import Backend

CONFIG = Settings(
    auth=AuthSettings(secret=SECRET),
    channels=[ChannelRule(match="room:*", presence=True), ChannelRule(match="*")],
)


def host_app(clarion: Clarion, *, lifespan: bool = True) -> FastAPI:
    """A FastAPI app of the kind the docs show: Clarion under /realtime, its hub run by
    the host's lifespan, and routes that publish, disconnect and count in process."""
    app = FastAPI(lifespan=clarion.lifespan if lifespan else None)
    app.mount("/realtime", clarion)

    @app.post("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, Any]:
        published = await clarion.api.publish("orders", {"id": order_id})
        return {"offset": published.position.offset}

    @app.post("/logout/{user}")
    async def logout(user: str) -> dict[str, Any]:
        await clarion.api.disconnect(user, reason="logged out")
        return {}

    @app.get("/rooms/{room}")
    async def room(room: str) -> dict[str, Any]:
        stats = await clarion.api.presence_stats(f"room:{room}")
        return {"clients": stats.clients, "users": stats.users}

    return app


@asynccontextmanager
async def hosted(app: FastAPI, backend: Backend, port: int) -> AsyncIterator[Server]:
    """Serve *app* with hypercorn's own ``serve`` for *backend*, as ``hypercorn main:app``
    would."""
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    stop = anyio.Event()
    serve = hypercorn.trio.serve if backend == "trio" else hypercorn.asyncio.serve
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        with anyio.fail_after(10):
            await wait_listening(port)
        try:
            yield Server("127.0.0.1", port, "/realtime/ws")
        finally:
            stop.set()


async def post(server: Server, path: str) -> tuple[int, Any]:
    return await http_call(server, "POST", path)


async def test_a_fastapi_route_publishes_to_clients_of_the_mounted_app(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    clarion = Clarion(CONFIG)
    with anyio.fail_after(20):
        async with (
            hosted(host_app(clarion), anyio_backend, free_tcp_port) as server,
            connect(f"{server.ws_url}?token={token('alice')}") as alice,
            connect(server.ws_url) as anonymous,
        ):
            await subscribe(alice, "orders")
            await subscribe(alice, "room:1")
            await subscribe(anonymous, "room:1")
            assert await post(server, "/orders/7") == (200, {"offset": 1})
            message = await alice.receive_object()
            assert (message["channel"], message["data"]) == ("orders", {"id": 7})
            status, counted = await http_call(server, "GET", "/rooms/1")
            assert (status, counted) == (200, {"clients": 2, "users": 1})
            # Clarion's own routes are under the mount too, the dashboard's included: its
            # page loads its script and the API beside it, and learns the endpoint's path.
            assert (await http_call(server, "GET", "/realtime/health"))[0] == 200
            status, page = await http_exchange(server, "GET", "/realtime/")
            assert status == 200
            assert b'src="dashboard.js"' in page
            status, script = await http_exchange(server, "GET", "/realtime/dashboard.js")
            assert status == 200
            assert b'from "./client.js"' in script
            assert b'fetch("api/stats"' in script
            status, stats = await http_call(server, "GET", "/realtime/api/stats")
            assert (status, stats["websocket_path"]) == (200, "/realtime/ws")
            body = msgspec.json.encode({"channel": "orders", "data": 8})
            status, reply = await http_call(server, "POST", "/realtime/api/publish", body)
            assert (status, reply["offset"]) == (200, 2)
            assert (await alice.receive_object())["data"] == 8
            assert (await post(server, "/logout/alice"))[0] == 200
            closed = await alice.wait_closed()
            assert (closed.code, closed.reason) == (4003, "logged out")
            await anonymous.request({"type": "ping", "id": "still here"})
        # The host's shutdown stopped the hub.
        assert clarion.hub is None


async def test_without_the_host_s_lifespan_the_mounted_app_says_it_is_not_running(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    clarion = Clarion(CONFIG)
    with anyio.fail_after(20):
        async with hosted(
            host_app(clarion, lifespan=False), anyio_backend, free_tcp_port
        ) as server:
            status, body = await http_call(server, "GET", "/realtime/ready")
            assert (status, body) == (503, {"status": "not ready", "reason": "starting"})
            publish = msgspec.json.encode({"channel": "orders", "data": 1})
            status, error = await http_call(server, "POST", "/realtime/api/publish", publish)
            assert (status, error["code"]) == (503, 116)
            with pytest.raises(HandshakeRefused) as refused:
                async with connect(server.ws_url):
                    pass
            assert refused.value.status == 503
            assert msgspec.json.decode(refused.value.body)["code"] == 116


async def test_the_documented_host_app_works_as_written(
    anyio_backend: Backend, free_tcp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/http-api.md, "Inside a Python app": its main.py, as written."""
    monkeypatch.delenv("CLARION_CONFIG", raising=False)
    namespace: dict[str, Any] = {}
    exec(code_block(DOCS / "http-api.md", "## Inside a Python app", "python"), namespace)
    with anyio.fail_after(20):
        async with (
            hosted(namespace["app"], anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as client,
        ):
            await subscribe(client, "orders")
            assert await post(server, "/orders/7") == (200, {"offset": 1})
            message = await client.receive_object()
            assert (message["channel"], message["data"]) == ("orders", {"id": 7})
            assert await post(server, "/logout/nobody") == (200, {})
