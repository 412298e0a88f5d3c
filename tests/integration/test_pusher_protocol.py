"""The Pusher door under hostile or mistaken input, frame by frame: every refusal has its
documented code, and no input crashes a connection (1011) or the server (500)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import anyio
import msgspec
import pytest

from channels.config import ChannelRule
from service.pusher.signatures import request_string, sign
from service.settings import AppSettings, AuthSettings, ConfigSource, ServerSettings, Settings
from tests.integration.test_metrics import scrape
from tests.support.auth import SECRET as JWT_SECRET
from tests.support.server import http_call, running_server
from tests.support.wsclient import Closed, connect

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from channels.config import BrokerConfig
    from service.runner import Backend
    from tests.support.server import Server
    from tests.support.wsclient import Client

SECRET = "0123456789abcdef0123"


def settings(**app: Any) -> Settings:
    options: dict[str, Any] = {"client_events": True, **app}
    server = options.pop("server", {})
    return Settings(
        apps=[AppSettings(id="1", key="app-key", secret=SECRET, **options)],
        server=ServerSettings(**server),
    )


def url(server: Server, query: str = "protocol=7", key: str = "app-key") -> str:
    return f"ws://127.0.0.1:{server.port}/app/{key}?{query}"


async def established(client: Client) -> str:
    """Read ``pusher:connection_established``; return the socket id."""
    event = await client.receive_object()
    assert event["event"] == "pusher:connection_established"
    return str(json.loads(event["data"])["socket_id"])


async def refusal(server: Server, address: str) -> tuple[Any, int | None]:
    """The ``pusher:error`` data and the close code a refused connection gets."""
    async with connect(address) as client:
        error = await client.receive_object()
        assert error["event"] == "pusher:error"
        with pytest.raises(Closed) as closed:
            await client.receive_object()
    return error["data"], closed.value.code


async def error_of(client: Client, event: dict[str, Any]) -> dict[str, Any]:
    """Send *event*; return the data of the error it is answered with."""
    await client.send_json(event)
    answer = await client.receive_object()
    assert answer["event"] in ("pusher:error", "pusher:subscription_error"), answer
    data = answer["data"]
    return dict(json.loads(data) if isinstance(data, str) else data)


async def subscribe_signed(
    client: Client, socket_id: str, channel: str, key: str = "app-key"
) -> None:
    """Subscribe to a private *channel* with an authorization signed by the app's secret,
    and read its ``subscription_succeeded``."""
    auth = f"{key}:" + sign(SECRET, f"{socket_id}:{channel}")
    await client.send_json(
        {"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}
    )
    assert (await client.receive_object())["event"] == "pusher_internal:subscription_succeeded"


@pytest.fixture
async def server(anyio_backend: Backend, free_tcp_port: int) -> AsyncIterator[Server]:
    async with running_server(settings(), anyio_backend, free_tcp_port) as running:
        yield running


@pytest.mark.parametrize(
    ("query", "key", "code"),
    [
        ("", "app-key", 4008),
        ("protocol=seven", "app-key", 4006),
        ("protocol=8", "app-key", 4007),
        ("protocol=7", "no-such-key", 4001),
    ],
    ids=["no-protocol", "bad-version", "unsupported", "unknown-key"],
)
async def test_a_refused_handshake_gets_its_code_then_a_close(
    server: Server, query: str, key: str, code: int
) -> None:
    with anyio.fail_after(10):
        data, closed = await refusal(server, url(server, query, key))
    assert (data["code"], closed) == (code, code)


async def test_an_app_over_its_connections_refuses_with_4004(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = settings(max_connections=1)
    with anyio.fail_after(10):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(url(server)) as first,
        ):
            await established(first)
            data, closed = await refusal(server, url(server))
            assert (data["code"], closed) == (4004, 4004)


async def test_bad_events_get_coded_errors_and_the_connection_goes_on(server: Server) -> None:
    with anyio.fail_after(10):
        async with connect(url(server)) as client:
            socket_id = await established(client)
            await client.send_text("not json")
            error = await client.receive_object()
            assert error["data"]["code"] == 100
            cases: list[tuple[dict[str, Any], int]] = [
                ({"event": "pusher:nonsense"}, 102),
                ({"event": "pusher:subscribe", "data": {"nochannel": 1}}, 101),
                ({"event": "pusher:subscribe", "data": "not an object"}, 101),
                ({"event": "pusher:subscribe", "data": {"channel": "bad name"}}, 200),
                ({"event": "pusher:subscribe", "data": {"channel": "private-x"}}, 109),
                (
                    {
                        "event": "pusher:subscribe",
                        "data": {"channel": "private-x", "auth": "app-key:00"},
                    },
                    109,
                ),
                # A signature of another app's key, or of another socket, is refused.
                (
                    {
                        "event": "pusher:subscribe",
                        "data": {
                            "channel": "private-x",
                            "auth": "other:" + sign(SECRET, f"{socket_id}:private-x"),
                        },
                    },
                    109,
                ),
                (
                    {
                        "event": "pusher:subscribe",
                        "data": {
                            "channel": "private-x",
                            "auth": "app-key:" + sign(SECRET, "1.2:private-x"),
                        },
                    },
                    109,
                ),
                ({"event": "client-x", "channel": "news", "data": {}}, 202),
            ]
            for event, code in cases:
                assert (await error_of(client, event))["code"] == code, event
            # Presence: channel_data that is signed but not a member, then a good one.
            channel_data = "[1]"
            auth = "app-key:" + sign(SECRET, f"{socket_id}:presence-r:{channel_data}")
            subscribe = {"channel": "presence-r", "auth": auth, "channel_data": channel_data}
            error = await error_of(client, {"event": "pusher:subscribe", "data": subscribe})
            assert error["code"] == 101
            await client.send_json({"event": "pusher:ping", "data": {}})
            assert (await client.receive_object())["event"] == "pusher:pong"


async def test_client_events_are_refused_where_pusher_refuses_them(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(10):
        async with (
            running_server(settings(client_events=False), anyio_backend, free_tcp_port) as server,
            connect(url(server)) as client,
        ):
            socket_id = await established(client)
            await subscribe_signed(client, socket_id, "private-x")
            error = await error_of(
                client, {"event": "client-x", "channel": "private-x", "data": {}}
            )
            assert error == {"code": 202, "message": "client events are not enabled"}


async def test_encrypted_channels_take_no_client_events(server: Server) -> None:
    with anyio.fail_after(10):
        async with connect(url(server)) as client:
            socket_id = await established(client)
            channel = "private-encrypted-x"
            await subscribe_signed(client, socket_id, channel)
            error = await error_of(client, {"event": "client-x", "channel": channel, "data": {}})
            assert error["code"] == 202


async def test_client_events_over_the_rate_close_with_4301(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = settings(client_event_rate_per_second=3)
    with anyio.fail_after(10):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(url(server)) as client,
        ):
            socket_id = await established(client)
            await subscribe_signed(client, socket_id, "private-x")
            for _ in range(4):
                await client.send_json({"event": "client-x", "channel": "private-x", "data": {}})
            assert (await client.receive_object())["data"]["code"] == 4301
            with pytest.raises(Closed) as closed:
                await client.receive_object()
            assert closed.value.code == 4301


async def test_a_bad_signin_closes_with_4009(server: Server) -> None:
    with anyio.fail_after(10):
        async with connect(url(server)) as client:
            await established(client)
            signin = {"auth": "app-key:00", "user_data": json.dumps({"id": "ann"})}
            await client.send_json({"event": "pusher:signin", "data": signin})
            assert (await client.receive_object())["data"]["code"] == 4009
            with pytest.raises(Closed) as closed:
                await client.receive_object()
            assert closed.value.code == 4009


async def test_a_silent_client_is_pinged_then_closed_with_4201(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = settings(activity_timeout_seconds=1, server={"pong_timeout_seconds": 0.5})
    with anyio.fail_after(10):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(url(server)) as client,
        ):
            established_event = await client.receive_object()
            assert json.loads(established_event["data"])["activity_timeout"] == 1
            assert (await client.receive_object())["event"] == "pusher:ping"
            with pytest.raises(Closed) as closed:
                await client.receive_object()
            assert closed.value.code == 4201


async def test_a_drain_closes_pusher_clients_with_4200(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(10):
        async with (
            running_server(settings(), anyio_backend, free_tcp_port) as server,
            connect(url(server)) as client,
        ):
            await established(client)
            assert server.app is not None
            await server.app.drain()
            with pytest.raises(Closed) as closed:
                await client.receive_object()
            assert closed.value.code == 4200
            # And a new connection is told to go elsewhere at once.
            data, code = await refusal(server, url(server))
            assert (data["code"], code) == (4200, 4200)


def signed(
    method: str,
    path: str,
    body: bytes = b"",
    secret: str = SECRET,
    key: str = "app-key",
    **extra: str,
) -> str:
    """*path* with the query the Pusher libraries sign it with."""
    query = {
        "auth_key": key,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        **({"body_md5": hashlib.md5(body).hexdigest()} if body else {}),
        **extra,
    }
    query["auth_signature"] = sign(secret, request_string(method, path, query.items()))
    return f"{path}?{urlencode(query)}"


async def test_the_http_api_refuses_what_is_not_signed_by_the_app(
    server: Server,
) -> None:
    body = msgspec.json.encode({"name": "e", "data": "x", "channel": "news"})
    path = "/apps/1/events"
    with anyio.fail_after(10):
        assert (await http_call(server, "POST", signed("POST", path, body), body))[0] == 200
        old = signed("POST", path, body, auth_timestamp=str(int(time.time()) - 3600))
        refused = [
            signed("POST", path, body, secret="another-secret-0000"),
            old,
            signed("POST", path, b'{"other": 1}'),  # another body's MD5
            signed("POST", path, body).replace("auth_version=1.0", "auth_version=2.0"),
            path,
        ]
        for target in refused:
            status, reply = await http_call(server, "POST", target, body)
            assert (status, reply["code"]) == (401, 106), target
        status, _ = await http_call(server, "POST", signed("POST", "/apps/9/events", body), body)
        assert status == 404
        # The signature covers the query: a parameter added afterwards breaks it.
        status, _ = await http_call(server, "GET", signed("GET", "/apps/1/channels") + "&info=x")
        assert status == 401


@pytest.mark.parametrize(
    ("method", "path", "body", "code"),
    [
        ("POST", "/apps/1/events", b"not json", 100),
        ("POST", "/apps/1/events", b'{"data":' + b"[" * 5000 + b"]" * 5000 + b"}", 101),
        ("POST", "/apps/1/events", b'{"name": "e", "data": "x"}', 101),
        (
            "POST",
            "/apps/1/events",
            b'{"name": "e", "data": {"not": "a string"}, "channel": "a"}',
            101,
        ),
        ("POST", "/apps/1/events", b'{"name": "e", "data": "x", "channel": "bad name"}', 200),
        (
            "POST",
            "/apps/1/events",
            b'{"name": "e", "data": "x", "channel": "a", "socket_id": "x"}',
            101,
        ),
        ("POST", "/apps/1/batch_events", b'{"batch": [{"channel": "a"}]}', 101),
        ("GET", "/apps/1/channels/news/users", b"", 101),
        ("GET", "/apps/1/channels/news?info=bogus", b"", 101),
        ("GET", "/apps/1/channels?info=user_count", b"", 101),
        ("GET", "/apps/1/channels/" + "x" * 300, b"", 200),
    ],
    ids=[
        "not-json",
        "nested-too-deeply",
        "no-channel",
        "data-not-string",
        "bad-channel",
        "bad-socket-id",
        "batch-incomplete",
        "users-of-public",
        "bad-info",
        "user-count-unfiltered",
        "bad-channel-read",
    ],
)
async def test_the_http_api_answers_bad_requests_with_codes(
    server: Server, method: str, path: str, body: bytes, code: int
) -> None:
    base, _, query = path.partition("?")
    extra = dict(item.split("=") for item in query.split("&")) if query else {}
    with anyio.fail_after(10):
        status, reply = await http_call(server, method, signed(method, base, body, **extra), body)
    assert (status, reply["code"]) == (400, code)


async def test_events_publish_under_the_engines_limits(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    config = msgspec.structs.replace(settings(), broker=broker_config)
    config = msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, broadcast_max_channels=2)
    )
    with anyio.fail_after(10):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            body = msgspec.json.encode({"name": "e", "data": "x", "channels": ["a", "b", "c"]})
            status, reply = await http_call(
                server, "POST", signed("POST", "/apps/1/events", body), body
            )
            assert (status, reply["code"]) == (400, 101)
            big = msgspec.json.encode({"name": "e", "data": "x" * 70_000, "channel": "a"})
            status, reply = await http_call(
                server, "POST", signed("POST", "/apps/1/events", big), big
            )
            assert (status, reply["code"]) == (413, 205)


async def test_through_clarions_door_no_one_forges_a_pusher_channels_events(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    """The default app's channels through Clarion's protocol and its open HTTP API: a
    private or presence channel takes no anonymous message, and no message is relayed
    as a server's event (a member joining) or with another user's id."""
    config = settings(default=True)
    with anyio.fail_after(10):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(url(server)) as pusher_client,
            connect(server.ws_url) as native,
        ):
            socket_id = await established(pusher_client)
            channel_data = json.dumps({"user_id": "ann"})
            auth = "app-key:" + sign(SECRET, f"{socket_id}:presence-room:{channel_data}")
            subscribe = {"channel": "presence-room", "auth": auth, "channel_data": channel_data}
            await pusher_client.send_json({"event": "pusher:subscribe", "data": subscribe})
            assert (await pusher_client.receive_object())["event"].endswith("succeeded")
            await pusher_client.send_json(
                {"event": "pusher:subscribe", "data": {"channel": "news"}}
            )
            assert (await pusher_client.receive_object())["event"].endswith("succeeded")
            forged = {
                "event": "pusher_internal:member_added",
                "data": json.dumps({"user_id": "mallory"}),
                "user_id": "bob",
            }
            for channel in ("presence-room", "private-room"):
                body = msgspec.json.encode({"channel": channel, "data": forged})
                status, reply = await http_call(server, "POST", "/api/publish", body)
                assert (status, reply["code"]) == (403, 202), channel
                request = {"type": "publish", "id": 1, "channel": channel, "data": forged}
                assert await native.code_of(request) == 202
            # On a public channel it is a message like any other, never a member event.
            body = msgspec.json.encode({"channel": "news", "data": forged})
            assert (await http_call(server, "POST", "/api/publish", body))[0] == 200
            relayed = await pusher_client.receive_object()
            assert relayed["event"] == "message"
            assert json.loads(relayed["data"]) == forged
            assert "user_id" not in relayed
            # The backend's own API may not send a server's event either.
            event = msgspec.json.encode({"name": "pusher:error", "data": "x", "channel": "news"})
            status, reply = await http_call(
                server, "POST", signed("POST", "/apps/1/events", event), event
            )
            assert (status, reply["code"]) == (400, 101)


async def test_a_member_needs_a_user_id(server: Server) -> None:
    with anyio.fail_after(10):
        async with connect(url(server)) as client:
            socket_id = await established(client)
            for channel_data in ('{"user_id": ""}', '{"user_info": {}}'):
                auth = "app-key:" + sign(SECRET, f"{socket_id}:presence-r:{channel_data}")
                subscribe = {"channel": "presence-r", "auth": auth, "channel_data": channel_data}
                error = await error_of(client, {"event": "pusher:subscribe", "data": subscribe})
                assert error["code"] == 101, channel_data


async def test_a_pusher_only_server_serves_no_channel_through_clarions_protocol(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    app = AppSettings(id="1", key="app-key", secret=SECRET, channels=[ChannelRule(match="*")])
    config = Settings(channels=[], apps=[app])
    with anyio.fail_after(10):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(url(server)) as pusher_client,
            connect(server.ws_url) as native,
        ):
            await established(pusher_client)
            await pusher_client.send_json(
                {"event": "pusher:subscribe", "data": {"channel": "news"}}
            )
            assert (await pusher_client.receive_object())["event"].endswith("succeeded")
            subscribe = {"type": "subscribe", "id": 1, "channel": "news"}
            assert await native.code_of(subscribe) == 201
            body = msgspec.json.encode({"channel": "news", "data": 1})
            assert (await http_call(server, "POST", "/api/publish", body))[1]["code"] == 201


async def test_the_http_api_refuses_a_wrong_method_and_an_odd_timestamp(server: Server) -> None:
    with anyio.fail_after(10):
        status, reply = await http_call(server, "GET", signed("GET", "/apps/1/events"))
        assert (status, reply["code"]) == (405, 105)
        for stamp in ("\u00b2", "9" * 5000, "-1", "1e9"):
            target = signed("GET", "/apps/1/channels", auth_timestamp=stamp)
            status, reply = await http_call(server, "GET", target)
            assert (status, reply["code"]) == (401, 106), stamp


async def test_a_refused_event_publishes_nowhere_and_a_batch_key_covers_each_event(
    server: Server,
) -> None:
    with anyio.fail_after(10):
        async with connect(url(server)) as client:
            await established(client)
            for channel in ("news", "sports"):
                await client.send_json({"event": "pusher:subscribe", "data": {"channel": channel}})
                assert (await client.receive_object())["event"].endswith("succeeded")
            refused = [
                {"name": "e", "data": "x", "channels": ["news", "bad channel!"]},
                {"name": "e", "data": "x", "channel": "news", "info": "user_count"},
                {"name": "e", "data": "x", "channel": "news", "info": "bogus"},
            ]
            for event in refused:
                body = msgspec.json.encode(event)
                status, _ = await http_call(
                    server, "POST", signed("POST", "/apps/1/events", body), body
                )
                assert status == 400, event
            batch = {
                "batch": [
                    {"channel": "news", "name": "e1", "data": "1"},
                    {"channel": "news", "name": "e2", "data": "2", "socket_id": "abc"},
                ]
            }
            body = msgspec.json.encode(batch)
            status, _ = await http_call(
                server, "POST", signed("POST", "/apps/1/batch_events", body), body
            )
            assert status == 400
            # With one idempotency key, each event of a batch is published once, even
            # two on one channel; the same batch again publishes nothing.
            batch = {
                "batch": [
                    {"channel": "news", "name": "e1", "data": "1"},
                    {"channel": "news", "name": "e2", "data": "2"},
                    {"channel": "sports", "name": "e3", "data": "3"},
                ]
            }
            body = msgspec.json.encode(batch)
            for _ in range(2):
                target = signed("POST", "/apps/1/batch_events", body)
                status, _ = await http_call(
                    server, "POST", target, body, "x-idempotency-key: k1\r\n"
                )
                assert status == 200
            await client.send_json({"event": "pusher:ping", "data": {}})
            received = []
            while True:
                event = await client.receive_object()
                if event["event"] == "pusher:pong":
                    break
                received.append((event["channel"], event["event"]))
            assert received == [("news", "e1"), ("news", "e2"), ("sports", "e3")]


async def test_deeply_nested_frames_get_a_code_not_a_crash(server: Server) -> None:
    with anyio.fail_after(10):
        async with connect(url(server)) as client:
            await established(client)
            await client.send_text('{"event":"pusher:ping","data":' + "[" * 5000 + "]" * 5000 + "}")
            assert (await client.receive_object())["data"]["code"] == 100
            deep = "[" * 5000 + "]" * 5000
            await client.send_text('{"event":"pusher:subscribe","data":' + json.dumps(deep) + "}")
            assert (await client.receive_object())["data"]["code"] == 101
            await client.send_json({"event": "pusher:ping", "data": {}})
            assert (await client.receive_object())["event"] == "pusher:pong"


async def test_a_subscription_the_server_ended_takes_no_client_event(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = settings(server={"api_keys": ["backend-key-0123456789"]}, default=True)
    with anyio.fail_after(10):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(url(server)) as client,
        ):
            socket_id = await established(client)
            user_data = json.dumps({"id": "bob"})
            auth = "app-key:" + sign(SECRET, f"{socket_id}::user::{user_data}")
            await client.send_json(
                {"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}
            )
            assert (await client.receive_object())["event"] == "pusher:signin_success"
            await subscribe_signed(client, socket_id, "private-x")
            body = msgspec.json.encode({"user": "bob", "channel": "private-x"})
            headers = "authorization: Bearer backend-key-0123456789\r\n"
            assert (await http_call(server, "POST", "/api/unsubscribe", body, headers))[0] == 200
            assert (await client.receive_object())["event"] == "clarion:unsubscribed"
            error = await error_of(
                client, {"event": "client-x", "channel": "private-x", "data": {}}
            )
            assert error["code"] == 202
            # Unsubscribing from it is no error either, and the connection goes on.
            await client.send_json(
                {"event": "pusher:unsubscribe", "data": {"channel": "private-x"}}
            )
            await client.send_json({"event": "pusher:ping", "data": {}})
            assert (await client.receive_object())["event"] == "pusher:pong"


async def test_a_message_may_leave_out_its_own_publisher_only(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    """Through Clarion's protocol, an envelope naming another connection's socket_id is
    refused: no publisher keeps a message from a chosen victim."""
    with anyio.fail_after(10):
        async with (
            running_server(settings(default=True), anyio_backend, free_tcp_port) as server,
            connect(url(server)) as victim,
        ):
            socket_id = await established(victim)
            data = {"event": "e", "data": "x", "socket_id": socket_id}
            body = msgspec.json.encode({"channel": "news", "data": data})
            status, reply = await http_call(server, "POST", "/api/publish", body)
            assert (status, reply["code"]) == (403, 202)


APPS_BEFORE = """
server: {bind: "127.0.0.1:%d"}
apps:
  - {id: "1", key: one, secret: "${APP_SECRET}"}
  - {id: "2", key: two, secret: "${APP_SECRET}"}
"""
APPS_AFTER = """
server: {bind: "127.0.0.1:%d"}
apps:
  - {id: "1", key: one, secret: "${APP_SECRET}", client_events: true}
  - id: "3"
    key: three
    secret: "${APP_SECRET}"
    webhooks: [{url: "http://127.0.0.1:9/hooks", events: [client_event]}]
"""


async def test_a_reload_adds_changes_and_removes_apps_and_keeps_the_others_connections(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_SECRET", SECRET)
    path = tmp_path / "apps.yaml"
    path.write_text(APPS_BEFORE % free_tcp_port)
    source = ConfigSource(path=str(path))
    with anyio.fail_after(15):
        async with (
            running_server(source.load(), anyio_backend, free_tcp_port, source=source) as server,
            connect(url(server, key="one")) as one,
            connect(url(server, key="two")) as two,
        ):
            socket_id = await established(one)
            await established(two)
            await subscribe_signed(one, socket_id, "private-x", key="one")
            event = {"event": "client-x", "channel": "private-x", "data": {}}
            assert (await error_of(one, event))["code"] == 202  # not enabled yet
            path.write_text(APPS_AFTER % free_tcp_port)
            assert server.app is not None
            reply = await server.app.reload()
            assert reply.restart_needed == ["apps[3].webhooks"]
            # App 1 kept its connection and takes client events now; app 2 is gone.
            await one.send_json(event)
            await one.send_json({"event": "pusher:ping", "data": {}})
            assert (await one.receive_object())["event"] == "pusher:pong"
            with pytest.raises(Closed) as closed:
                await two.receive_object()
            assert closed.value.code == 4200
            data, code = await refusal(server, url(server, key="two"))
            assert (data["code"], code) == (4001, 4001)
            async with connect(url(server, key="three")) as three:
                await established(three)
            # The HTTP API knows the apps as they are now.
            body = msgspec.json.encode({"name": "e", "data": "x", "channel": "news"})
            target = signed("POST", "/apps/2/events", body).replace(
                "auth_key=app-key", "auth_key=two"
            )
            assert (await http_call(server, "POST", target, body))[0] == 404


async def test_the_metrics_count_each_app_apart(anyio_backend: Backend, free_tcp_port: int) -> None:
    apps = [
        AppSettings(id="1", key="one", secret=SECRET),
        AppSettings(id="2", key="two", secret=SECRET),
    ]
    with anyio.fail_after(10):
        async with (
            running_server(Settings(apps=apps), anyio_backend, free_tcp_port) as server,
            connect(url(server, key="one")) as one,
        ):
            await established(one)
            await one.send_json({"event": "pusher:subscribe", "data": {"channel": "news"}})
            assert (await one.receive_object())["event"].endswith("succeeded")
            body = msgspec.json.encode({"name": "e", "data": "x", "channel": "news"})
            target = signed("POST", "/apps/1/events", body).replace(
                "auth_key=app-key", "auth_key=one"
            )
            target = target.rsplit("&auth_signature=", 1)[0]
            query = dict(item.split("=", 1) for item in target.partition("?")[2].split("&"))
            query["auth_signature"] = sign(
                SECRET, request_string("POST", "/apps/1/events", query.items())
            )
            assert (await http_call(server, "POST", "/apps/1/events?" + urlencode(query), body))[
                0
            ] == 200
            await one.receive_object()
            samples = await scrape(server)
            status, stats = await http_call(server, "GET", "/api/stats")
    assert samples['clarion_app_connections{app="1"}'] == 1
    assert samples['clarion_app_connections{app="2"}'] == 0
    assert samples['clarion_app_subscriptions{app="1"}'] == 1
    assert samples['clarion_app_messages_published_total{app="1"}'] == 1
    assert samples['clarion_app_messages_delivered_total{app="1"}'] == 1
    assert samples['clarion_app_messages_published_total{app="2"}'] == 0
    # The server's own channels (no default app here) saw nothing.
    assert samples["clarion_connections"] == 0
    assert status == 200
    assert stats["apps"] == [
        {
            "id": "1",
            "connections": 1,
            "subscriptions": 1,
            "channels": 1,
            "published": 1,
            "delivered": 1,
        },
        {
            "id": "2",
            "connections": 0,
            "subscriptions": 0,
            "channels": 0,
            "published": 0,
            "delivered": 0,
        },
    ]


async def test_an_apps_backend_over_its_events_per_second_gets_429(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = settings(backend_events_per_second=3)
    with anyio.fail_after(10):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            body = msgspec.json.encode({"name": "e", "data": "x", "channels": ["a", "b"]})
            statuses = []
            for _ in range(2):
                target = signed("POST", "/apps/1/events", body)
                status, reply = await http_call(server, "POST", target, body)
                statuses.append((status, reply.get("code")))
            # Two channels count two events: the second request is over the three.
            assert statuses == [(200, None), (429, 114)]
            # A request of more events than the bucket holds never passes, and says so.
            many = msgspec.json.encode({"name": "e", "data": "x", "channels": list("abcd")})
            status, reply = await http_call(
                server, "POST", signed("POST", "/apps/1/events", many), many
            )
            assert (status, reply["code"]) == (429, 114)
            assert "4 events in one request" in reply["message"]


async def test_a_reload_may_move_keys_between_apps(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APP_SECRET", SECRET)
    path = tmp_path / "apps.yaml"
    before = f'server: {{bind: "127.0.0.1:{free_tcp_port}"}}\napps:\n'
    path.write_text(
        before + '  - {id: "1", key: a, secret: "${APP_SECRET}"}\n'
        '  - {id: "2", key: b, secret: "${APP_SECRET}"}\n'
    )
    source = ConfigSource(path=str(path))
    with anyio.fail_after(15):
        async with running_server(
            source.load(), anyio_backend, free_tcp_port, source=source
        ) as server:
            assert server.app is not None
            path.write_text(
                before + '  - {id: "1", key: b, secret: "${APP_SECRET}"}\n'
                '  - {id: "2", key: a, secret: "${APP_SECRET}"}\n'
                '  - {id: "3", key: c, secret: "${APP_SECRET}"}\n'
            )
            for _ in range(2):  # the swap, then the same file again
                assert (await server.app.reload()).restart_needed == []
                for key, app_id in (("a", "2"), ("b", "1"), ("c", "3")):
                    async with connect(url(server, key=key)) as client:
                        await established(client)
                    body = msgspec.json.encode({"name": "e", "data": "x", "channel": "n"})
                    target = signed("POST", f"/apps/{app_id}/events", body, key=key)
                    assert (await http_call(server, "POST", target, body))[0] == 200, key


async def test_client_events_nested_near_the_limit_never_end_the_connection(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = settings(client_event_rate_per_second=1000)
    with anyio.fail_after(20):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(url(server)) as client,
        ):
            socket_id = await established(client)
            await subscribe_signed(client, socket_id, "private-x")
            for depth in range(880, 1000, 6):
                data = "[" * depth + "]" * depth
                await client.send_text(
                    '{"event":"client-x","channel":"private-x","data":' + data + "}"
                )
                await client.send_json({"event": "pusher:ping", "data": {}})
                while (event := await client.receive_object())["event"] != "pusher:pong":
                    assert event["event"] == "pusher:error", (depth, event)
                    assert event["data"]["code"] in (100, 101), depth


async def test_with_auth_required_the_server_channels_need_a_sign_in_through_the_door(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    """A configuration that asks for authentication has no anonymous way in: a Pusher
    client of the default app signs in before it reads a public channel."""
    config = Settings(
        auth=AuthSettings(required=True, secret=JWT_SECRET),
        server=ServerSettings(api_open=True),
        apps=[AppSettings(id="1", key="app-key", secret=SECRET, default=True)],
    )
    with anyio.fail_after(10):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(url(server)) as client,
        ):
            socket_id = await established(client)
            subscribe = {"event": "pusher:subscribe", "data": {"channel": "news"}}
            assert (await error_of(client, subscribe))["code"] == 108
            user_data = json.dumps({"id": "ann"})
            auth = "app-key:" + sign(SECRET, f"{socket_id}::user::{user_data}")
            await client.send_json(
                {"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}
            )
            assert (await client.receive_object())["event"] == "pusher:signin_success"
            await client.send_json(subscribe)
            assert (await client.receive_object())["event"].endswith("succeeded")
