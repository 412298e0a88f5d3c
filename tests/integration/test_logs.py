"""Structured logs of a real ``clarion serve``: one JSON line per event, no secret in them."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tests.integration.test_commands import BIN, process
from tests.support.auth import token as signed
from tests.support.server import Server, http_call
from tests.support.wsclient import HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from pathlib import Path

    from service.runner import Backend

SECRET = "a-log-test-secret-long-enough-for-hs256-0123456789"
API_KEY = "an-api-key-that-must-never-be-logged"
CONFIG = """
server: {bind: "127.0.0.1:%d", log_format: json, api_keys: ["${API_KEY}"]}
auth: {secret: "${SECRET}"}
"""


def events(log: str) -> list[dict[str, Any]]:
    """Every line of *log*, each of which must be one JSON object."""
    return [json.loads(line) for line in log.splitlines()]


async def test_json_logs_name_the_connection_and_never_a_secret(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    config = tmp_path / "channels.yaml"
    config.write_text(CONFIG % free_tcp_port)
    token = signed(key=SECRET)
    argv = [str(BIN / "clarion"), "serve", "--config", str(config), "--backend", anyio_backend]
    log = tmp_path / "log"
    env = {"SECRET": SECRET, "API_KEY": API_KEY}
    with anyio.fail_after(30):
        async with process([*argv, "--log-level", "debug"], free_tcp_port, log, env) as proc:
            server = Server("127.0.0.1", free_tcp_port)
            async with connect(f"{server.ws_url}?token={token}") as client:
                await subscribe(client, "news")
                refused = await client.request({"type": "subscribe", "id": 2, "channel": "a b"})
                assert refused["code"] == 200
            async with connect(server.ws_url, subprotocols=["clarion", f"bearer.{token}"]):
                pass
            body = b'{"channel":"news","data":1}'
            status, _ = await http_call(
                server, "POST", "/api/publish", body, f"authorization: Bearer {API_KEY}\r\n"
            )
            assert status == 200
            bad = f"{server.ws_url}?token={token[:-4]}AAAA"
            async with connect(server.ws_url):
                pass
            with pytest.raises(HandshakeRefused) as caught:
                async with connect(bad):
                    pass
            assert caught.value.status == 401
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    text = log.read_text()
    for secret in (token, token.split(".")[2], SECRET, API_KEY):
        assert secret not in text
    lines = events(text)
    assert {line["level"] for line in lines} <= {"debug", "info", "warning", "error"}
    opened = [line for line in lines if line["message"] == "connection opened"]
    assert [line.get("user") for line in opened] == ["alice", "alice", None]
    assert all(line["client"].startswith("127.0.0.1:") for line in opened)
    closed = [line for line in lines if line["message"] == "connection closed"]
    assert sorted(line["conn"] for line in closed) == sorted(line["conn"] for line in opened)
    assert {line["reason"] for line in closed} == {"client"}
    (request,) = [line for line in lines if line["message"] == "request refused"]
    assert (request["conn"], request["channel"], request["code"]) == (
        opened[0]["conn"],
        "a b",
        200,
    )
    (handshake,) = [line for line in lines if line["message"] == "handshake refused"]
    assert handshake["code"] == 109
    assert "SIGTERM received: closing connections" in [line["message"] for line in lines]
