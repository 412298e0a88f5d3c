"""The ASGI app driven in memory: lifespan, HTTP API, and sessions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from channels.config import ChannelRule, History, Shape
from service.app import Clarion, create_app
from service.settings import ServerSettings, Settings
from service.workers import claim_only_worker
from tests.support.asgi import http_request, running_app, websocket

if TYPE_CHECKING:
    from pathlib import Path
import multiprocessing
import os
from types import SimpleNamespace

KEYED = Settings(server=ServerSettings(api_keys=["k1", "k2"]))


async def test_health() -> None:
    async with running_app() as app:
        assert await http_request(app, "GET", "/health") == (
            200,
            {"content-type": "application/json", "content-length": "15"},
            {"status": "ok"},
        )


async def test_ready_until_draining() -> None:
    async with running_app() as app:
        assert (await http_request(app, "GET", "/ready"))[::2] == (200, {"status": "ready"})
        assert app.hub is not None
        app.hub.close()  # what a drain does first
        status, _, body = await http_request(app, "GET", "/ready")
        assert (status, body) == (503, {"status": "not ready", "reason": "draining"})
        assert (await http_request(app, "GET", "/health"))[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, 104),
        ("POST", "/health", 405, 105),
        ("POST", "/ready", 405, 105),
        ("POST", "/metrics", 405, 105),
        ("POST", "/client.js", 405, 105),
        ("GET", "/api/publish", 405, 105),
        ("GET", "/api/reload", 405, 105),
        ("POST", "/api/stats", 405, 105),
        ("POST", "/api/presence", 405, 105),
        ("GET", "/api/presence", 400, 101),
        ("GET", "/api/stats?limit=-1", 400, 101),
        ("POST", "/api/reload", 401, 106),
        ("GET", "/ws", 426, 107),
    ],
    ids=[
        "unknown-route",
        "post-health",
        "post-ready",
        "post-metrics",
        "post-client",
        "get-publish",
        "get-reload",
        "post-stats",
        "post-presence",
        "presence-without-channel",
        "negative-limit",
        "reload-without-keys",
        "plain-http-on-ws",
    ],
)
async def test_http_errors_are_json(method: str, path: str, status: int, code: int) -> None:
    async with running_app() as app:
        got_status, headers, body = await http_request(app, method, path)
    assert (got_status, body["type"], body["code"]) == (status, "error", code)
    assert headers["content-type"] == "application/json"
    if status == 426:
        assert headers["upgrade"] == "websocket"
    if status == 405:
        assert headers["allow"] in {"GET, HEAD", "POST"}
        assert f"use {headers['allow'].replace(', ', ' or ')}" in body["message"]


async def test_http_publish_reaches_websocket_subscribers() -> None:
    async with running_app() as app, websocket(app) as client:
        await client.request({"type": "subscribe", "id": 1, "channel": "c"})
        status, _, body = await http_request(
            app, "POST", "/api/publish", b'{"channel":"c","data":{"n":1}}'
        )
        assert status == 200
        assert body == {"type": "reply", "channel": "c", "offset": 1, "epoch": body["epoch"]}
        assert await client.receive_object() == {
            "type": "message",
            "channel": "c",
            "offset": 1,
            "data": {"n": 1},
        }


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ([], 401, 106),
        ([(b"authorization", b"Basic k1")], 401, 106),
        ([(b"authorization", b"Bearer nope")], 401, 106),
        ([(b"authorization", b"Bearer k2")], 200, None),
        ([(b"authorization", b"bearer k1")], 200, None),
    ],
    ids=["missing", "wrong-scheme", "wrong-key", "second-key", "lowercase-scheme"],
)
async def test_http_publish_needs_a_key_when_keys_are_set(
    headers: list[tuple[bytes, bytes]], status: int, code: int | None
) -> None:
    async with running_app(KEYED) as app:
        got_status, got_headers, body = await http_request(
            app, "POST", "/api/publish", b'{"channel":"c","data":1}', headers
        )
    assert got_status == status
    if code is not None:
        assert body["code"] == code
        assert got_headers["www-authenticate"] == "Bearer"


async def test_http_publish_with_a_key_may_publish_where_clients_may_not() -> None:
    config = Settings(
        server=ServerSettings(api_keys=["k"]), channels=[ChannelRule(match="*", publish=False)]
    )
    auth = [(b"authorization", b"Bearer k")]
    async with running_app(config) as app:
        status, _, _ = await http_request(
            app, "POST", "/api/publish", b'{"channel":"c","data":1}', auth
        )
    assert status == 200
    async with running_app(Settings(channels=[ChannelRule(match="*", publish=False)])) as app:
        status, _, body = await http_request(
            app, "POST", "/api/publish", b'{"channel":"c","data":1}'
        )
    assert (status, body["code"]) == (403, 202)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, 100),
        (b'{"channel":"c"}', 400, 101),
        (b'{"channel":"bad name","data":1}', 400, 200),
        (b'{"channel":"none:1","data":1}', 404, 201),
        (b'{"channel":"small","data":"' + b"x" * 20 + b'"}', 413, 205),
        (b'{"channel":"c","data":"' + b"x" * 200 + b'"}', 413, 103),
    ],
    ids=[
        "bad-json",
        "missing-data",
        "bad-channel",
        "no-rule",
        "message-too-large",
        "body-too-large",
    ],
)
async def test_http_publish_errors(body: bytes, status: int, code: int) -> None:
    config = Settings(
        server=ServerSettings(max_request_bytes=100),
        channels=[ChannelRule(match="c"), ChannelRule(match="small", max_message_bytes=10)],
    )
    async with running_app(config) as app:
        got_status, _, got_body = await http_request(app, "POST", "/api/publish", body)
    assert (got_status, got_body["code"]) == (status, code)


async def test_websocket_elsewhere_is_refused_with_404() -> None:
    async with running_app() as app, websocket(app, "/other", accept=False) as client:
        start = await client.handshake()
        body = await client.receive()
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 404)
    assert msgspec.json.decode(body["body"])["code"] == 104


async def test_session_ops_and_replies() -> None:
    config = Settings(channels=[ChannelRule(match="*", history=History(size=10))])
    async with running_app(config) as app, websocket(app) as client:
        assert await client.request({"type": "ping", "id": "p"}) == {"type": "reply", "id": "p"}
        reply = await client.request({"type": "subscribe", "id": 1, "channel": "c"})
        epoch = reply["epoch"]
        assert reply == {"type": "reply", "id": 1, "channel": "c", "offset": 0, "epoch": epoch}
        await client.send_json({"type": "publish", "id": 2, "channel": "c", "data": "x"})
        # The message is queued before the publish reply: it was delivered first.
        assert await client.receive_object() == {
            "type": "message",
            "channel": "c",
            "offset": 1,
            "data": "x",
        }
        assert await client.receive_object() == {
            "type": "reply",
            "id": 2,
            "channel": "c",
            "offset": 1,
            "epoch": epoch,
        }
        assert await client.request({"type": "history", "id": 3, "channel": "c"}) == {
            "type": "reply",
            "id": 3,
            "channel": "c",
            "offset": 1,
            "epoch": epoch,
            "messages": [{"offset": 1, "data": "x"}],
        }
        assert await client.request({"type": "unsubscribe", "id": 4, "channel": "c"}) == {
            "type": "reply",
            "id": 4,
        }
        await client.send_bytes(b'{"type":"ping","id":5}')
        assert await client.receive_object() == {"type": "reply", "id": 5}


BAD_FRAMES: list[tuple[Any, int]] = [
    ("not json", 100),
    ({"type": "shout", "id": 1}, 102),
    ({"type": "subscribe", "id": 1}, 101),
    ({"type": "subscribe", "id": 1, "channel": 5}, 101),
    ({"type": "subscribe", "id": 1, "channel": "bad name"}, 200),
    ({"type": "subscribe", "id": 1, "channel": "nope"}, 201),
    ({"type": "publish", "id": 1, "channel": "ro", "data": 1}, 202),
    ({"type": "subscribe", "id": 1, "channel": "c"}, 203),
    ({"type": "unsubscribe", "id": 1, "channel": "ro"}, 204),
    ({"type": "publish", "id": 1, "channel": "c", "data": "x" * 20}, 205),
]


async def test_bad_requests_get_their_code_and_the_connection_keeps_working() -> None:
    config = Settings(
        channels=[
            ChannelRule(match="c", max_message_bytes=10),
            ChannelRule(match="ro", publish=False),
        ]
    )
    async with running_app(config) as app, websocket(app) as client:
        await client.request({"type": "subscribe", "id": 0, "channel": "c"})
        for frame, code in BAD_FRAMES:
            if isinstance(frame, str):
                await client.send_text(frame)
            else:
                await client.send_json(frame)
            error = await client.receive_object()
            assert (error["type"], error["code"]) == ("error", code), frame
            assert error.get("id") == (None if isinstance(frame, str) else 1)
            assert error["message"]
        assert await client.request({"type": "ping", "id": 9}) == {"type": "reply", "id": 9}


async def test_messages_waiting_behind_a_send_are_coalesced_into_one_array_frame() -> None:
    config = Settings(server=ServerSettings(flush_delay_seconds=0))
    with anyio.fail_after(10):
        async with running_app(config) as app, websocket(app, buffer=0) as client:
            await client.send_json({"type": "subscribe", "id": 1, "channel": "c"})
            assert (await client.receive_frame())[0]["type"] == "reply"
            # The client does not read while ten messages are published: the writer is
            # blocked on its first send, and the other nine wait in the outbox.
            for index in range(10):
                await publish(app, "c", index)
                if index == 0:
                    await anyio.wait_all_tasks_blocked()
            frames = [await client.receive_frame(), await client.receive_frame()]
    assert [len(frame) for frame in frames] == [1, 9]
    assert [message["data"] for frame in frames for message in frame] == list(range(10))


async def test_messages_published_within_the_flush_delay_share_a_frame() -> None:
    config = Settings(server=ServerSettings(flush_delay_seconds=0.5))
    with anyio.fail_after(10):
        async with running_app(config) as app, websocket(app) as client:
            await client.request({"type": "subscribe", "id": 1, "channel": "c"})
            for index in range(5):
                await publish(app, "c", index)
            frame = await client.receive_frame()
            assert [message["data"] for message in frame] == list(range(5))
            # A reply is not held back by the delay.
            await client.send_json({"type": "ping", "id": 2})
            assert await client.receive_frame() == [{"type": "reply", "id": 2}]


async def publish(app: Clarion, channel: str, data: int) -> None:
    body = b'{"channel":"%s","data":%d}' % (channel.encode(), data)
    status, _, _ = await http_request(app, "POST", "/api/publish", body)
    assert status == 200


async def test_a_slow_consumer_is_closed_with_4000_and_others_keep_receiving() -> None:
    config = Settings(server=ServerSettings(outbox_messages=4, flush_delay_seconds=0))
    async with running_app(config) as app:
        async with websocket(app, buffer=0) as slow, websocket(app) as fast:
            await slow.request({"type": "subscribe", "id": 1, "channel": "c"})
            await fast.request({"type": "subscribe", "id": 1, "channel": "c"})
            for index in range(10):
                await http_request(
                    app, "POST", "/api/publish", b'{"channel":"c","data":%d}' % index
                )
            received = [await fast.receive_object() for _ in range(10)]
            assert [message["data"] for message in received] == list(range(10))
            # The slow client's writer was blocked on its first send when the outbox
            # overflowed: that send is abandoned and the connection closed.
            assert await slow.receive() == {
                "type": "websocket.close",
                "code": 4000,
                "reason": "slow consumer",
            }
            assert app.hub is not None
            await anyio.wait_all_tasks_blocked()  # the closed session finishes leaving
            assert app.hub.statistics().connections == 1


async def test_an_oversize_frame_closes_with_1009() -> None:
    async with running_app(Settings(server=ServerSettings(max_request_bytes=64))) as app:
        async with websocket(app) as client:
            await client.send_text('{"type":"ping","id":1,"pad":"' + "x" * 64 + '"}')
            assert await client.receive() == {
                "type": "websocket.close",
                "code": 1009,
                "reason": "frame too large",
            }


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1000, "client"),
        (1006, "client"),
        (1002, "protocol_error"),
        (1007, "invalid_payload"),
        (1009, "frame_too_large"),
    ],
)
async def test_a_disconnect_with_the_code_of_a_failed_connection_is_counted_under_it(
    code: int, reason: str
) -> None:
    """A server that failed the connection itself (hypercorn: service.wsstream) says so
    in the disconnect's code."""
    async with running_app() as app, websocket(app) as client:
        await client.disconnect(code)
        await anyio.wait_all_tasks_blocked()  # the session ends and counts
        assert app.counters.disconnects == {reason: 1}


async def test_a_failure_code_that_follows_a_broken_send_is_still_counted() -> None:
    """The session ends as soon as a send fails; the server's disconnect comes after."""
    async with running_app() as app, websocket(app) as client:
        await client.stop_receiving()
        await client.send_json({"type": "ping", "id": 1})  # its reply cannot be sent
        await anyio.wait_all_tasks_blocked()  # the session waits for the disconnect
        assert app.counters.disconnects == {}
        await client.disconnect(1002)
        await anyio.wait_all_tasks_blocked()
        assert app.counters.disconnects == {"protocol_error": 1}


async def test_drain_sends_what_is_queued_then_closes_1001() -> None:
    async with running_app() as app, websocket(app, buffer=0) as client:
        await client.request({"type": "subscribe", "id": 1, "channel": "c"})
        for index in range(3):
            await http_request(app, "POST", "/api/publish", b'{"channel":"c","data":%d}' % index)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(app.drain)
                got = [await client.receive_object() for _ in range(3)]
                assert [message["data"] for message in got] == [0, 1, 2]
                assert await client.receive() == {
                    "type": "websocket.close",
                    "code": 1001,
                    "reason": "server shutting down",
                }
        status, _, body = await http_request(
            app, "POST", "/api/publish", b'{"channel":"c","data":1}'
        )
        assert (status, body["code"]) == (503, 300)
    async with running_app() as app:
        await app.drain()
        async with websocket(app, accept=False) as refused:
            start = await refused.handshake()
            assert start["status"] == 503


async def test_client_disconnect_ends_the_session_and_detaches() -> None:
    async with running_app() as app:
        assert app.hub is not None
        async with websocket(app) as client:
            await client.request({"type": "subscribe", "id": 1, "channel": "c"})
            assert app.hub.statistics().subscriptions == 1
            await client.disconnect()
            with anyio.fail_after(5):
                await app.hub.wait_no_connections()
        assert app.hub.statistics().channels == 0


async def test_websocket_before_lifespan_is_refused() -> None:
    app = Clarion(Settings())
    async with websocket(app, accept=False) as client:
        start = await client.handshake()
    assert start["status"] == 503


async def test_a_second_worker_fails_its_lifespan_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pose as a worker of a server (the master's PID is ours, so unique) whose other
    # worker already runs the memory broker.
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: SimpleNamespace(pid=os.getpid()))
    first = claim_only_worker()
    assert first is not None
    try:
        with pytest.raises(ExceptionGroup) as caught:
            async with running_app():
                pass
        assert caught.group_contains(
            RuntimeError, match=r"startup failed: .*another worker of this server"
        )
    finally:
        first.close()


def test_create_app_reads_clarion_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {websocket_path: /live}\n")
    monkeypatch.setenv("CLARION_CONFIG", str(path))
    assert create_app().config.server.websocket_path == "/live"
    monkeypatch.delenv("CLARION_CONFIG")
    assert create_app().config == Settings()


async def test_refresh_without_authentication_is_an_error() -> None:
    async with running_app() as app, websocket(app) as client:
        reply = await client.request({"type": "refresh", "id": 1, "token": "x.y.z"})
        assert (reply["type"], reply["id"], reply["code"]) == ("error", 1, 109)


TYPED = Settings(
    channels=[
        ChannelRule(
            match="typed",
            data=Shape(type="object", fields={"n": Shape(type="integer", minimum=0)}),
        ),
        ChannelRule(match="*"),
    ]
)


async def test_a_message_of_the_wrong_shape_is_refused_with_its_field() -> None:
    async with running_app(TYPED) as app, websocket(app) as client:
        bad = {"type": "publish", "id": 1, "channel": "typed", "data": {"n": -1}}
        reply = await client.request(bad)
        assert (reply["type"], reply["code"]) == ("error", 208)
        assert reply["message"].startswith("data.n: Expected `int` >= 0")
        good = await client.request({**bad, "id": 2, "data": {"n": 1}})
        assert good["type"] == "reply"
        free = await client.request({**bad, "id": 3, "channel": "other", "data": "any"})
        assert free["type"] == "reply"
        status, _, body = await http_request(
            app, "POST", "/api/publish", b'{"channel":"typed","data":{"n":"x"}}'
        )
        assert (status, body["code"]) == (422, 208)


async def test_a_quiet_client_is_pinged_and_one_that_never_answers_is_closed_4002() -> None:
    server = ServerSettings(ping_interval_seconds=0.05, pong_timeout_seconds=1)
    async with running_app(Settings(server=server)) as app, websocket(app) as client:
        with anyio.fail_after(10):
            await client.request({"type": "subscribe", "id": 1, "channel": "c"})
            assert await client.receive_frame() == [{"type": "ping"}]
            # Any frame answers a ping: a pong (which gets no reply) or a request.
            await client.send_json({"type": "pong"})
            assert await client.receive_frame() == [{"type": "ping"}]
            assert await client.request({"type": "ping", "id": 2}) == {"type": "reply", "id": 2}
            assert await client.receive_frame() == [{"type": "ping"}]
            # Messages still flow to a client between pings.
            await publish(app, "c", 7)
            assert (await client.receive_object())["data"] == 7
            # No answer within pong_timeout_seconds: the peer is taken for dead.
            assert await client.receive() == {
                "type": "websocket.close",
                "code": 4002,
                "reason": "no pong",
            }
            assert app.hub is not None
            await app.hub.wait_no_connections()
            assert app.hub.statistics().subscriptions == 0


async def test_stats_list_the_node_and_its_busiest_channels() -> None:
    async with running_app(KEYED) as app:
        assert (await http_request(app, "GET", "/api/stats"))[0] == 401
        auth = [(b"authorization", b"Bearer k1")]
        async with websocket(app) as alice, websocket(app) as bob:
            for client, channels in ((alice, ["a", "b"]), (bob, ["b"])):
                for channel in channels:
                    reply = await client.request({"type": "subscribe", "channel": channel})
                    assert reply["type"] == "reply"
            for data in (1, 2):
                body = msgspec.json.encode({"channel": "b", "data": data})
                assert (await http_request(app, "POST", "/api/publish", body, auth))[0] == 200
            assert [(await bob.receive_object())["data"] for _ in range(2)] == [1, 2]
            status, _, stats = await http_request(app, "GET", "/api/stats", headers=auth)
            assert status == 200
            assert (stats["ready"], stats["reason"], stats["broker"]) == (True, None, "memory")
            assert stats["websocket_path"] == "/ws"
            assert (stats["connections"], stats["subscriptions"], stats["published"]) == (2, 3, 2)
            assert stats["channels"] == [
                {"channel": "b", "subscribers": 2, "messages": 2},
                {"channel": "a", "subscribers": 1, "messages": 0},
            ]
            limited = await http_request(app, "GET", "/api/stats?limit=1", headers=auth)
            assert [item["channel"] for item in limited[2]["channels"]] == ["b"]
            bad = await http_request(app, "GET", "/api/stats?limit=x", headers=auth)
            assert (bad[0], bad[2]["code"]) == (400, 101)


async def test_an_app_given_its_configuration_refuses_to_reload() -> None:
    async with running_app(KEYED) as app:
        auth = [(b"authorization", b"Bearer k1")]
        status, _, body = await http_request(app, "POST", "/api/reload", headers=auth)
    assert (status, body["code"]) == (422, 10)
    assert "not a file to reload" in body["message"]


async def test_the_api_answers_503_between_lifespans() -> None:
    app = Clarion(KEYED)  # no lifespan has run: no hub
    auth = [(b"authorization", b"Bearer k1")]
    for method, path in [("GET", "/api/stats"), ("GET", "/api/presence?channel=x")]:
        status, _, body = await http_request(app, method, path, headers=auth)
        assert (status, body["code"]) == (503, 116)
    body_bytes = b'{"channel":"c","data":1}'
    status, _, body = await http_request(app, "POST", "/api/publish", body_bytes, auth)
    assert (status, body["code"]) == (503, 116)
