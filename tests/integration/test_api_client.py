"""The server API from Python (`ServerAPIClient`) and from the command line (``clarion
publish --channels``, ``disconnect``, ``unsubscribe``, ``history``, ``presence``,
``channels``), against a real server."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from channels.config import BrokerConfig, ChannelRule, History
from service.client import ClarionError, ServerAPIClient
from service.client.errors import ConnectionFailed
from service.settings import AuthSettings, ServerSettings, Settings
from tests.support.auth import SECRET, token
from tests.support.redis import free_port
from tests.support.server import running_server
from tests.support.wsclient import HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from service.runner import Backend

CLARION = str(Path(sys.executable).parent / "clarion")
KEY = "the-backend-key"


def config(broker: BrokerConfig = BrokerConfig()) -> Settings:  # noqa: B008 - a frozen Struct
    return Settings(
        broker=broker,
        auth=AuthSettings(secret=SECRET),
        server=ServerSettings(api_keys=[KEY]),
        channels=[
            ChannelRule(match="room:*", presence=True),
            ChannelRule(match="*", history=History(size=10)),
        ],
    )


async def test_the_python_client_calls_every_method(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(20):
        async with (
            running_server(config(broker_config), anyio_backend, free_tcp_port) as server,
            connect(f"{server.ws_url}?token={token('alice')}") as alice,
        ):
            api = ServerAPIClient(f"http://127.0.0.1:{free_tcp_port}", api_key=KEY)
            await subscribe(alice, "room:1")
            published = await api.publish("news", {"n": 1}, idempotency_key="k")
            assert published["offset"] == 1
            results = await api.broadcast(["news", "bad name"], [2])
            assert [result.get("offset") for result in results] == [2, None]
            assert results[1]["error"]["code"] == 200
            page = await api.history("news", since=1)
            assert [message["data"] for message in page["messages"]] == [[2]]
            assert [client["user"] for client in await api.presence("room:1")] == ["alice"]
            stats = await api.presence_stats("room:1")
            assert (stats["client_count"], stats["user_count"]) == (1, 1)
            while (await api.channels(prefix="room:"))["channels"] == []:  # noqa: ASYNC110 - counts are written a moment later
                await anyio.sleep(0.02)
            assert (await api.channels(prefix="room:"))["channels"] == [
                {"channel": "room:1", "subscribers": 1}
            ]
            replies = await api.batch([{"method": "presence", "channel": "news"}])
            assert replies[0]["code"] == 206
            await api.unsubscribe("alice", "room:1")
            assert (await alice.receive_object())["code"] == 210
            await api.disconnect("alice", reason="bye", until=time.time() + 60)
            assert (await alice.wait_closed()).reason == "bye"
            with pytest.raises(ClarionError) as refused:
                await api.presence("news")
            assert refused.value.code == 206
            with pytest.raises(ClarionError) as unauthorized:
                await ServerAPIClient(api.url, api_key="wrong").publish("news", 1)
            assert unauthorized.value.code == 106
    with pytest.raises(ConnectionFailed):
        await ServerAPIClient(f"http://127.0.0.1:{free_port()}").publish("news", 1)


async def clarion(*argv: str, port: int, key: str | None = KEY) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLARION_API_KEY", "CLARION_API_URL")}
    if key is not None:
        env["CLARION_API_KEY"] = key
    done = await anyio.run_process(
        [CLARION, *argv, "--api", f"http://127.0.0.1:{port}"], check=False, env=env
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_command_line_drives_the_server_api(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(60):
        async with (
            running_server(config(), anyio_backend, free_tcp_port) as server,
            connect(f"{server.ws_url}?token={token('bob')}") as bob,
        ):
            await subscribe(bob, "a")
            await subscribe(bob, "room:1")
            status, out, _ = await clarion(
                "publish", "--channels", "a,b", '{"x": 1}', port=free_tcp_port
            )
            assert status == 0
            results = msgspec.json.decode(out)
            assert [result["channel"] for result in results] == ["a", "b"]
            assert (await bob.receive_object())["data"] == {"x": 1}
            status, out, _ = await clarion("history", "a", "--limit", "5", port=free_tcp_port)
            assert [m["data"] for m in msgspec.json.decode(out)["messages"]] == [{"x": 1}]
            status, out, _ = await clarion("presence", "room:1", "--count-only", port=free_tcp_port)
            assert msgspec.json.decode(out)["client_count"] == 1
            status, out, _ = await clarion("channels", "--prefix", "room:", port=free_tcp_port)
            assert status == 0
            assert msgspec.json.decode(out)["cursor"] is None
            status, out, _ = await clarion("unsubscribe", "bob", "room:1", port=free_tcp_port)
            assert (status, out) == (0, "{}\n")
            assert (await bob.receive_object())["code"] == 210
            status, out, _ = await clarion(
                "disconnect", "bob", "--reason", "banned", "--for", "60", port=free_tcp_port
            )
            assert (status, out) == (0, "{}\n")
            assert (await bob.wait_closed()).reason == "banned"
            with pytest.raises(HandshakeRefused):
                async with connect(f"{server.ws_url}?token={token('bob')}"):
                    pass
            # Refusals: exit status 1 with the code; usage errors: 2.
            status, out, err = await clarion(
                "publish", "--channels", "a,bad name", "1", port=free_tcp_port
            )
            assert (status, "refused on some channels" in err) == (1, True)
            assert [r.get("error", {}).get("code") for r in msgspec.json.decode(out)] == [None, 200]
            status, _, err = await clarion("presence", "a", port=free_tcp_port)
            assert (status, "206" in err) == (1, True)
            status, _, err = await clarion("disconnect", "x", port=free_tcp_port, key=None)
            assert (status, "106" in err) == (1, True)
            status, _, err = await clarion("publish", "--channels", "a", "{", port=free_tcp_port)
            assert (status, "not JSON" in err) == (2, True)
            status, _, err = await clarion(
                "publish", "a", "1", "--channels", "b", port=free_tcp_port
            )
            assert status == 2
