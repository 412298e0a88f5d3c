"""Configuration reload: SIGHUP to ``clarion serve``, ``clarion reload``, ``POST /api/reload``."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import anyio

from service.cli import main
from service.settings import ConfigSource
from tests.integration.test_commands import BIN, process
from tests.support.server import Server, http_call, running_server
from tests.support.wsclient import connect, subscribe

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from service.runner import Backend

BEFORE = """
server: {bind: "127.0.0.1:%d", api_keys: ["${KEY}"]}
channels:
  - {match: "open:*"}
  - {match: "old:*"}
"""
AFTER = """
server: {bind: "127.0.0.1:%d", api_keys: ["${KEY}"], max_subscriptions: 2}
channels:
  - {match: "open:*"}
  - {match: "new:*"}
"""
INVALID = """
server: {bind: "127.0.0.1:%d", max_subscriptions: -1}
"""
KEY = "reload-test-key"
AUTH = f"authorization: Bearer {KEY}"


async def test_sighup_applies_new_rules_and_keeps_the_connections(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    config = tmp_path / "channels.yaml"
    config.write_text(BEFORE % free_tcp_port)
    argv = [str(BIN / "clarion"), "serve", "--config", str(config), "--backend", anyio_backend]
    log = tmp_path / "log"
    with anyio.fail_after(30):
        async with process(argv, free_tcp_port, log, env={"KEY": KEY}) as proc:
            server = Server("127.0.0.1", free_tcp_port)
            async with connect(server.ws_url) as client:
                await subscribe(client, "open:1")
                await subscribe(client, "old:1")
                assert await client.code_of({"type": "subscribe", "channel": "new:1"}) == 201
                config.write_text(AFTER % free_tcp_port)
                proc.send_signal(signal.SIGHUP)
                ended = await client.receive_object()
                assert ended == {
                    "type": "unsubscribed",
                    "channel": "old:1",
                    "code": 201,
                    "message": "no channel rule matches 'old:1'",
                }
                await subscribe(client, "new:1")  # the new rule; the connection stayed
                body = b'{"channel":"open:1","data":"still here"}'
                await http_call(server, "POST", "/api/publish", body, f"{AUTH}\r\n")
                assert (await client.receive_object())["data"] == "still here"
                # The new limit: two subscriptions now.
                assert await client.code_of({"type": "subscribe", "channel": "open:2"}) == 207

                # An invalid file is refused; the running configuration stays.
                config.write_text(INVALID % free_tcp_port)
                result = await anyio.run_process([str(BIN / "clarion"), "reload", str(proc.pid)])
                assert result.returncode == 0
                await wait_logged(log, "reload refused")
                assert await client.code_of({"type": "unsubscribe", "channel": "new:1"}) is None
                assert await client.code_of({"type": "subscribe", "channel": "new:2"}) is None
                assert await client.code_of({"type": "subscribe", "channel": "old:1"}) == 201
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
    text = log.read_text()
    assert "configuration reloaded from" in text
    assert "1 subscriptions ended" in text
    assert "server.max_subscriptions: Expected `int` >= 1" in text


async def test_the_reload_api_needs_a_key_and_reports_what_it_did(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEY", KEY)
    config = tmp_path / "channels.yaml"
    config.write_text(BEFORE % free_tcp_port)
    source = ConfigSource(path=str(config))
    key = f"{AUTH}\r\n"
    with anyio.fail_after(15):
        async with running_server(
            source.load(), anyio_backend, free_tcp_port, source=source
        ) as server:
            status, reply = await http_call(server, "POST", "/api/reload")
            assert (status, reply["code"]) == (401, 106)
            changed = (AFTER % free_tcp_port).replace("127.0.0.1", "localhost")
            config.write_text(
                changed.replace("max_subscriptions: 2", "max_subscriptions: 2, listen_backlog: 50")
            )
            status, reply = await http_call(server, "POST", "/api/reload", headers=key)
            assert (status, reply) == (
                200,
                {
                    "type": "reply",
                    "ended": 0,
                    "restart_needed": ["server.bind", "server.listen_backlog"],
                },
            )
            config.write_text(INVALID % free_tcp_port)
            status, reply = await http_call(server, "POST", "/api/reload", headers=key)
            assert (status, reply["code"]) == (422, 10)
            assert "max_subscriptions" in reply["message"]
            # Still the configuration of the last good reload: its rules, its keys.
            async with connect(server.ws_url) as client:
                await subscribe(client, "new:1")
            status, _ = await http_call(server, "GET", "/ready")
            assert status == 200


async def wait_logged(log: Path, text: str) -> None:
    """Wait until the server's log holds *text*."""
    while True:
        if text in await anyio.Path(log).read_text():
            return
        await anyio.sleep(0.05)


async def test_clarion_reload_url_calls_the_api(
    anyio_backend: Backend,
    free_tcp_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KEY", KEY)
    config = tmp_path / "channels.yaml"
    config.write_text(BEFORE % free_tcp_port)
    source = ConfigSource(path=str(config))
    url = f"http://127.0.0.1:{free_tcp_port}"
    with anyio.fail_after(15):
        async with running_server(source.load(), anyio_backend, free_tcp_port, source=source):
            monkeypatch.setenv("CLARION_API_KEY", KEY)
            assert await anyio.to_thread.run_sync(main, ["reload", url]) == 0
            assert '"ended":0' in capsys.readouterr().out
            monkeypatch.setenv("CLARION_API_KEY", "wrong")
            assert await anyio.to_thread.run_sync(main, ["reload", url]) == 1
            assert "clarion: error: 401" in capsys.readouterr().err
    assert await anyio.to_thread.run_sync(main, ["reload", url]) == 1
    assert f"clarion: error: {url}" in capsys.readouterr().err
