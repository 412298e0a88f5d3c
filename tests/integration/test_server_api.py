"""The server API over HTTP (broadcast, history, presence counts) and in process
(``app.api``), on a real hypercorn, on the memory broker and through Redis."""

from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from channels.config import BrokerConfig, ChannelRule, History
from channels.errors import InvalidChannelName, PermissionDenied, TooManyChannels
from service.app import Clarion
from service.errors import BadMessage, NotStarted, Unauthorized
from service.settings import AuthSettings, ServerSettings, Settings
from tests.support.auth import SECRET, token
from tests.support.docs import DOCS, code_blocks, on_port
from tests.support.redis import free_port
from tests.support.server import Server, http_call, http_exchange, running_server
from tests.support.wsclient import HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from service.runner import Backend

RULES = [
    ChannelRule(
        match="closed:*", subscribe="authenticated", publish=False, history=History(size=10)
    ),
    ChannelRule(match="room:*", presence=True),
    ChannelRule(match="*", history=History(size=10)),
]
KEY = "backend-key"
AUTH = f"authorization: Bearer {KEY}\r\n"


def settings(broker: BrokerConfig, **server: Any) -> Settings:
    return Settings(broker=broker, channels=RULES, server=ServerSettings(**server))


async def post(server: Server, path: str, body: object, headers: str = "") -> tuple[int, Any]:
    return await http_call(server, "POST", path, msgspec.json.encode(body), headers)


async def test_a_broadcast_reaches_every_channel_once_and_reports_each_in_order(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    config = settings(broker_config, api_keys=[KEY])
    with anyio.fail_after(20):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as client,
        ):
            await subscribe(client, "a")
            await subscribe(client, "b")
            channels = ["a", "closed:x", "b", "bad name", "a"]
            body = {"channels": channels, "data": {"n": 1}, "idempotency_key": "k1"}
            status, reply = await post(server, "/api/broadcast", body, AUTH)
            assert status == 200, reply
            results = reply["results"]
            assert [result["channel"] for result in results] == channels
            assert [result.get("offset") for result in results] == [1, 1, 1, None, 1]
            assert [result.get("duplicate", False) for result in results] == [
                False,
                False,
                False,
                False,
                True,  # the same key on the same channel: published once
            ]
            assert results[3]["error"]["code"] == 200
            assert "error" not in results[1]  # a trusted caller publishes where clients may not
            got = [await client.receive_object() for _ in range(2)]
            assert sorted((m["channel"], m["data"]["n"]) for m in got) == [("a", 1), ("b", 1)]
            # A retry with the same key publishes nowhere twice.
            status, again = await post(server, "/api/broadcast", body, AUTH)
            assert status == 200
            assert [r.get("duplicate", False) for r in again["results"]] == [
                True,
                True,
                True,
                False,
                True,
            ]
            await client.request({"type": "ping", "id": "after"})  # nothing else came


async def test_an_open_api_broadcasts_as_an_anonymous_client(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with running_server(settings(BrokerConfig()), anyio_backend, free_tcp_port) as server:
            body = {"channels": ["closed:x", "news", "closed:y"], "data": 1}
            status, reply = await post(server, "/api/broadcast", body)
            assert status == 200
            codes = [result.get("error", {}).get("code") for result in reply["results"]]
            assert codes == [202, None, 202]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"channels": [f"c{index}" for index in range(1001)], "data": 1}, 400, 209),
        ({"channels": ["x"] * 10_000, "data": 1}, 400, 209),
        ({"channels": "news", "data": 1}, 400, 101),
        ({"channels": ["news", 7], "data": 1}, 400, 101),
        ({"channels": ["news"]}, 400, 101),
        ({"channels": ["news"], "data": 1, "extra": True}, 400, 101),
        ({"channels": ["news"], "data": 1, "idempotency_key": ""}, 400, 101),
    ],
)
async def test_a_bad_broadcast_is_refused_whole(
    anyio_backend: Backend, free_tcp_port: int, body: object, status: int, code: int
) -> None:
    with anyio.fail_after(20):
        async with (
            running_server(settings(BrokerConfig()), anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as client,
        ):
            await subscribe(client, "news")
            answer = await post(server, "/api/broadcast", body)
            assert (answer[0], answer[1]["code"]) == (status, code)
            status_, not_json = await http_call(server, "POST", "/api/broadcast", b"{")
            assert (status_, not_json["code"]) == (400, 100)
            await client.request({"type": "ping", "id": "after"})  # nothing was published


async def test_the_broadcast_limit_is_configurable(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = settings(BrokerConfig(), broadcast_max_channels=2)
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            status, reply = await post(
                server, "/api/broadcast", {"channels": ["a", "b"], "data": 1}
            )
            assert status == 200
            body = {"channels": ["a", "b", "c"], "data": 1}
            status, reply = await post(server, "/api/broadcast", body)
            assert (status, reply["code"]) == (400, 209)
            assert "at most 2 channels" in reply["message"]


async def test_history_over_http_answers_as_the_history_request(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    config = settings(broker_config, api_keys=[KEY])
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            for index in range(5):
                body = {"channel": "log", "data": index}
                assert (await post(server, "/api/publish", body, AUTH))[0] == 200
            status, page = await http_call(
                server, "GET", "/api/history?channel=log&since=2&limit=2", headers=AUTH
            )
            assert status == 200, page
            assert page["channel"] == "log"
            assert page["offset"] == 5
            assert [(m["offset"], m["data"]) for m in page["messages"]] == [(3, 2), (4, 3)]
            status, newest = await http_call(
                server, "GET", "/api/history?channel=log", headers=AUTH
            )
            assert [m["data"] for m in newest["messages"]] == [0, 1, 2, 3, 4]
            async with connect(server.ws_url) as client:
                same = await client.request(
                    {"type": "history", "id": 1, "channel": "log", "since": 2, "limit": 2}
                )
            assert same["messages"] == page["messages"]
            for query, code in [
                ("channel=log&since=-1", 101),
                ("channel=log&limit=0", 101),
                ("channel=log&limit=many", 101),
                ("since=1", 101),
                ("channel=nope%20x", 200),
            ]:
                status, error = await http_call(
                    server, "GET", f"/api/history?{query}", headers=AUTH
                )
                assert (status, error["code"]) == (400, code), query
            # A key reads any channel, even one no client may subscribe to.
            status, _ = await http_call(
                server, "GET", "/api/history?channel=closed:x", headers=AUTH
            )
            assert status == 200
            status, error = await http_call(server, "GET", "/api/history?channel=log")
            assert (status, error["code"]) == (401, 106)


async def test_an_open_api_reads_history_only_where_anonymous_clients_may(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with running_server(settings(BrokerConfig()), anyio_backend, free_tcp_port) as server:
            status, error = await http_call(server, "GET", "/api/history?channel=closed:x")
            assert (status, error["code"]) == (403, 202)
            status, error = await http_call(server, "GET", "/api/history?channel=room:1&limit=1")
            assert status == 200
            assert error["messages"] == []


async def test_presence_counts_clients_and_distinct_users(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    config = msgspec.structs.replace(
        settings(broker_config, api_keys=[KEY]), auth=AuthSettings(secret=SECRET)
    )
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            urls = [
                f"{server.ws_url}?token={token('alice')}",
                f"{server.ws_url}?token={token('alice')}",
                f"{server.ws_url}?token={token('bob')}",
                server.ws_url,
            ]
            async with connect(urls[0]) as a1, connect(urls[1]) as a2:
                async with connect(urls[2]) as b, connect(urls[3]) as anonymous:
                    for client in (a1, a2, b, anonymous):
                        await subscribe(client, "room:1")
                    status, counted = await http_call(
                        server, "GET", "/api/presence?channel=room:1&count_only=1", headers=AUTH
                    )
                    assert status == 200, counted
                    assert counted == {
                        "type": "reply",
                        "channel": "room:1",
                        "client_count": 4,
                        "user_count": 2,
                    }
                    status, listed = await http_call(
                        server, "GET", "/api/presence?channel=room:1&count_only=0", headers=AUTH
                    )
                    assert len(listed["clients"]) == 4
                for flag, code in [("yes", 101), ("1", 206)]:
                    status, error = await http_call(
                        server, "GET", f"/api/presence?channel=news&count_only={flag}", headers=AUTH
                    )
                    assert error["code"] == code


async def test_the_app_s_own_code_publishes_and_reads_in_process(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(20):
        async with (
            running_server(settings(broker_config), anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as client,
        ):
            assert server.app is not None
            api = server.app.api
            refused = await client.request(
                {"type": "publish", "id": 1, "channel": "closed:news", "data": 0}
            )
            assert refused["code"] == 202  # refused to clients...
            published = await api.publish("closed:news", {"text": "hi"})  # ...not to the app
            assert published.position.offset == 1
            await subscribe(client, "news")
            results = await api.broadcast(["news", "room:1", "missing channel"], [1, 2])
            assert [getattr(r, "position", None) is not None for r in results] == [
                True,
                True,
                False,
            ]
            message = await client.receive_object()
            assert (message["channel"], message["data"]) == ("news", [1, 2])
            page = await api.history("news")
            assert [item.data for item in page.publications] == [msgspec.Raw(b"[1,2]")]
            assert await api.presence("room:1") == []
            assert (await api.presence_stats("room:1")).clients == 0
            with pytest.raises(TooManyChannels):
                await api.broadcast(["news"] * 1001, 1)
            assert len((await api.history("closed:news")).publications) == 1
            with pytest.raises(PermissionDenied):  # what an untrusted caller would get
                await type(api)(server.app, trusted=False).history("closed:news")
            with pytest.raises(InvalidChannelName):
                await api.publish("bad name", 1)


async def test_the_in_process_api_says_when_the_app_is_not_running() -> None:
    app = Clarion(Settings())
    with pytest.raises(NotStarted) as caught:
        await app.api.publish("news", 1)
    assert caught.value.code == 116
    assert "lifespan" in str(caught.value)


def shown(value: Any) -> Any:
    """*value* with every epoch replaced by a placeholder: they differ from run to run."""
    if isinstance(value, dict):
        return {k: "EPOCH" if k == "epoch" else shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shown(item) for item in value]
    return value


async def test_the_documented_examples_answer_as_shown(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    """docs/http-api.md's "Examples": its configuration, each curl command as written
    (its method, address, headers and body), and what each one prints."""
    blocks = code_blocks(DOCS / "http-api.md", "## Examples")
    assert [language for language, _ in blocks] == ["yaml", "console"]
    env = {"CLARION_API_KEY": "backend-key", "CLARION_TOKEN_SECRET": "s" * 64}
    config = Settings.parse(blocks[0][1], env=env)
    lines = blocks[1][1].splitlines()
    pairs = list(zip(lines[::2], lines[1::2], strict=True))
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            for command, printed in pairs:
                argv = shlex.split(command.removeprefix("$ "))
                assert argv[:2] == ["curl", "-s"], command
                method: str = "GET"
                headers, body = "", b""
                address: str | None = None
                rest = argv[2:]
                while rest:
                    match rest:
                        case ["-X", method, *rest]:
                            pass
                        case ["-H", header, *rest]:
                            headers += header + "\r\n"
                        case ["-d", text, *rest]:
                            body = text.encode()
                        case [address, *rest]:
                            pass
                assert address is not None, command
                host, _, path = on_port(address, server.port).partition("/")
                assert host == f"127.0.0.1:{server.port}", command
                _, reply = await http_exchange(server, method, f"/{path}", body, headers)
                assert shown(msgspec.json.decode(reply)) == shown(msgspec.json.decode(printed))


def users_config(broker: BrokerConfig) -> Settings:
    """Users from tokens (not required), the API behind a key."""
    return msgspec.structs.replace(
        settings(broker, api_keys=[KEY]), auth=AuthSettings(secret=SECRET)
    )


def open_api_with_users() -> Settings:
    """Users from tokens, and the API open: its callers are anonymous clients."""
    return msgspec.structs.replace(settings(BrokerConfig()), auth=AuthSettings(secret=SECRET))


def as_user(server: Server, user: str) -> str:
    return f"{server.ws_url}?token={token(user)}"


async def test_a_disconnect_closes_every_connection_of_the_user_after_what_it_holds(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(20):
        async with running_server(
            users_config(broker_config), anyio_backend, free_tcp_port
        ) as server:
            async with (
                connect(as_user(server, "alice")) as phone,
                connect(as_user(server, "alice")) as laptop,
                connect(as_user(server, "bob")) as bob,
            ):
                for client in (phone, laptop, bob):
                    await subscribe(client, "news")
                body = {"channel": "news", "data": "last"}
                assert (await post(server, "/api/publish", body, AUTH))[0] == 200
                status, reply = await post(server, "/api/disconnect", {"user": "alice"}, AUTH)
                assert (status, reply) == (200, {"type": "reply"})
                for client in (phone, laptop):
                    assert (await client.receive_object())["data"] == "last"
                    closed = await client.wait_closed()
                    assert (closed.code, closed.reason) == (4003, "disconnected")
                assert (await bob.receive_object())["data"] == "last"
                assert (await bob.request({"type": "ping", "id": 1}))["type"] == "reply"
                # No ban: alice may come back at once.
                async with connect(as_user(server, "alice")) as again:
                    await subscribe(again, "news")
            metrics = (await http_exchange(server, "GET", "/metrics"))[1].decode()
            assert 'clarion_disconnects_total{reason="disconnected"} 2.0' in metrics


async def test_a_disconnect_until_keeps_the_user_out_until_then(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(20):
        async with running_server(
            users_config(broker_config), anyio_backend, free_tcp_port
        ) as server:
            async with connect(as_user(server, "mallory")) as mallory:
                body = {
                    "user": "mallory",
                    "code": 4100,
                    "reason": "banned",
                    "until": time.time() + 60,
                }
                assert (await post(server, "/api/disconnect", body, AUTH))[0] == 200
                closed = await mallory.wait_closed()
                assert (closed.code, closed.reason) == (4100, "banned")
            with pytest.raises(HandshakeRefused) as refused:
                async with connect(as_user(server, "mallory")):
                    pass
            assert refused.value.status == 403
            assert msgspec.json.decode(refused.value.body)["code"] == 117
            async with connect(as_user(server, "bob")) as bob:  # others still come in
                await subscribe(bob, "news")
            async with connect(server.ws_url) as anonymous:
                await subscribe(anonymous, "news")
            # A ban that is over keeps nobody out.
            body = {"user": "eve", "until": time.time() - 1}
            assert (await post(server, "/api/disconnect", body, AUTH))[0] == 200
            async with connect(as_user(server, "eve")) as eve:
                await subscribe(eve, "news")


async def test_an_unsubscribe_ends_the_users_subscription_with_a_notice(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(20):
        async with (
            running_server(users_config(broker_config), anyio_backend, free_tcp_port) as server,
            connect(as_user(server, "alice")) as alice,
            connect(as_user(server, "bob")) as bob,
        ):
            for client in (alice, bob):
                await subscribe(client, "news")
                await subscribe(client, "sports")
            body = {"user": "alice", "channel": "news"}
            assert await post(server, "/api/unsubscribe", body, AUTH) == (200, {"type": "reply"})
            notice = await alice.receive_object()
            assert (notice["type"], notice["channel"], notice["code"]) == (
                "unsubscribed",
                "news",
                210,
            )
            for channel in ("news", "sports"):
                body = {"channel": channel, "data": channel}
                assert (await post(server, "/api/publish", body, AUTH))[0] == 200
            assert (await alice.receive_object())["channel"] == "sports"  # not news
            got = [await bob.receive_object() for _ in range(2)]
            assert [message["channel"] for message in got] == ["news", "sports"]
            # The connection stays, and may subscribe again.
            await subscribe(alice, "news")


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/api/disconnect", {"user": ""}, 101),
        ("/api/disconnect", {"user": 7}, 101),
        ("/api/disconnect", {"user": "a", "code": 1000}, 101),
        ("/api/disconnect", {"user": "a", "code": 4000}, 101),
        ("/api/disconnect", {"user": "a", "until": 1e17}, 101),
        ("/api/disconnect", {"user": "a", "until": -5}, 101),
        ("/api/disconnect", {"user": "a", "code": 5000}, 101),
        ("/api/disconnect", {"user": "a", "reason": "é" * 62}, 101),
        ("/api/disconnect", {"user": "a", "until": "tomorrow"}, 101),
        ("/api/disconnect", {"user": "a", "ban": True}, 101),
        ("/api/unsubscribe", {"user": "a"}, 101),
        ("/api/unsubscribe", {"user": "a", "channel": "bad name"}, 200),
        ("/api/unsubscribe", {"user": "a", "channel": "x" * 10_000}, 200),
    ],
)
async def test_a_bad_user_command_is_refused(
    anyio_backend: Backend, free_tcp_port: int, path: str, body: object, code: int
) -> None:
    with anyio.fail_after(20):
        async with running_server(
            users_config(BrokerConfig()), anyio_backend, free_tcp_port
        ) as server:
            async with connect(as_user(server, "a")) as client:
                await subscribe(client, "news")
                status, reply = await post(server, path, body, AUTH)
                assert (status, reply["code"]) == (400, code)
                await client.request({"type": "ping", "id": "still here"})


async def test_user_commands_need_an_api_key(anyio_backend: Backend, free_tcp_port: int) -> None:
    open_config = msgspec.structs.replace(
        settings(BrokerConfig()), auth=AuthSettings(secret=SECRET)
    )
    with anyio.fail_after(20):
        async with running_server(open_config, anyio_backend, free_tcp_port) as server:
            async with connect(as_user(server, "alice")) as alice:
                for path, body in [
                    ("/api/disconnect", {"user": "alice"}),
                    ("/api/unsubscribe", {"user": "alice", "channel": "news"}),
                ]:
                    status, reply = await post(server, path, body)
                    assert (status, reply["code"]) == (401, 106)
                    assert "server.api_keys" in reply["message"]
                await alice.request({"type": "ping", "id": "still here"})
    with anyio.fail_after(20):
        async with running_server(
            users_config(BrokerConfig()), anyio_backend, free_tcp_port
        ) as server:
            for headers in ["", "authorization: Bearer wrong\r\n"]:
                status, reply = await post(server, "/api/disconnect", {"user": "x"}, headers)
                assert (status, reply["code"]) == (401, 106)


async def test_user_commands_reach_every_node_and_a_ban_a_node_started_later(
    anyio_backend: Backend, redis_broker: BrokerConfig
) -> None:
    config = users_config(redis_broker)
    ports = [free_port(), free_port(), free_port()]
    with anyio.fail_after(30):
        async with (
            running_server(config, anyio_backend, ports[0]) as a,
            running_server(config, anyio_backend, ports[1]) as b,
            connect(as_user(a, "alice")) as on_a,
            connect(as_user(b, "alice")) as on_b,
        ):
            for client in (on_a, on_b):
                await subscribe(client, "news")
            body = {"user": "alice", "channel": "news"}
            assert (await post(b, "/api/unsubscribe", body, AUTH))[0] == 200
            for client in (on_a, on_b):
                assert (await client.receive_object())["code"] == 210
            ban = {"user": "alice", "until": time.time() + 60}
            assert (await post(a, "/api/disconnect", ban, AUTH))[0] == 200
            for client in (on_a, on_b):
                assert (await client.wait_closed()).code == 4003
            async with running_server(config, anyio_backend, ports[2]) as c:
                code = None
                while code is None:  # the new node reads the bans once it reaches Redis
                    try:
                        async with connect(as_user(c, "alice")):
                            pass
                    except HandshakeRefused as refused:
                        code = msgspec.json.decode(refused.body)["code"]
                    else:
                        await anyio.sleep(0.05)
                assert code == 117


async def test_the_app_s_own_code_disconnects_and_unsubscribes_users(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with running_server(
            users_config(BrokerConfig()), anyio_backend, free_tcp_port
        ) as server:
            assert server.app is not None
            api = server.app.api
            async with connect(as_user(server, "alice")) as alice:
                await subscribe(alice, "news")
                await api.unsubscribe("alice", "news")
                assert (await alice.receive_object())["code"] == 210
                with pytest.raises(BadMessage):
                    await api.disconnect("alice", code=1000)
                with pytest.raises(BadMessage):
                    await api.disconnect("alice", reason="x" * 124)
                untrusted = type(api)(server.app, trusted=False)
                with pytest.raises(Unauthorized):
                    await untrusted.disconnect("alice")
                with pytest.raises(Unauthorized):
                    await untrusted.unsubscribe("alice", "news")
                await api.disconnect("alice", reason="logged out everywhere")
                closed = await alice.wait_closed()
                assert (closed.code, closed.reason) == (4003, "logged out everywhere")


async def wait_listed(server: Server, query: str, expected: list[dict[str, Any]]) -> None:
    """Wait until ``GET /api/channels?{query}`` lists *expected* (counts are written by
    each node's upkeep, a moment after they change)."""
    path = f"/api/channels?{query}"
    while (await http_call(server, "GET", path, headers=AUTH))[1]["channels"] != expected:  # noqa: ASYNC110 - polls the API
        await anyio.sleep(0.02)


async def test_the_channel_list_counts_subscribers_and_pages_in_name_order(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(20):
        async with (
            running_server(users_config(broker_config), anyio_backend, free_tcp_port) as server,
            connect(as_user(server, "alice")) as alice,
            connect(server.ws_url) as anonymous,
        ):
            for channel in ("room:b", "room:a", "news", "closed:x"):
                await subscribe(alice, channel)
            await subscribe(anonymous, "room:a")
            everything = [
                {"channel": "closed:x", "subscribers": 1},
                {"channel": "news", "subscribers": 1},
                {"channel": "room:a", "subscribers": 2},
                {"channel": "room:b", "subscribers": 1},
            ]
            await wait_listed(server, "", everything)
            status, page = await http_call(
                server, "GET", "/api/channels?prefix=room:", headers=AUTH
            )
            assert (status, page["channels"], page["cursor"]) == (200, everything[2:], None)
            seen, cursor = [], ""
            while True:
                query = f"limit=3&cursor={cursor}" if cursor else "limit=3"
                _, page = await http_call(server, "GET", f"/api/channels?{query}", headers=AUTH)
                seen += page["channels"]
                cursor = page["cursor"]
                if cursor is None:
                    break
                assert len(page["channels"]) == 3
            assert seen == everything
            await anonymous.request({"type": "unsubscribe", "id": 1, "channel": "room:a"})
            await wait_listed(server, "prefix=room:a", [{"channel": "room:a", "subscribers": 1}])
            for query in ("limit=0", "limit=1001", "limit=all"):
                status, error = await http_call(
                    server, "GET", f"/api/channels?{query}", headers=AUTH
                )
                assert (status, error["code"]) == (400, 101), query


async def test_an_open_api_lists_only_channels_anonymous_clients_may_subscribe_to(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = open_api_with_users()
    with anyio.fail_after(20):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(as_user(server, "alice")) as alice,
        ):
            await subscribe(alice, "closed:x")
            await subscribe(alice, "news")
            status, page = await http_call(server, "GET", "/api/channels")
            assert status == 200
            assert page == {
                "type": "reply",
                "channels": [{"channel": "news", "subscribers": 1}],
                "cursor": None,
            }


async def test_the_channel_list_sums_the_nodes(
    anyio_backend: Backend, redis_broker: BrokerConfig
) -> None:
    config = users_config(redis_broker)
    with anyio.fail_after(30):
        async with (
            running_server(config, anyio_backend, free_port()) as a,
            running_server(config, anyio_backend, free_port()) as b,
        ):
            async with connect(a.ws_url) as on_a, connect(b.ws_url) as on_b:
                await subscribe(on_a, "news")
                await subscribe(on_b, "news")
                await subscribe(on_b, "sports")
                both = [
                    {"channel": "news", "subscribers": 2},
                    {"channel": "sports", "subscribers": 1},
                ]
                await wait_listed(a, "", both)
                await wait_listed(b, "", both)
            await wait_listed(a, "", [])


async def test_a_batch_answers_each_request_in_order_as_alone(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(20):
        async with (
            running_server(users_config(broker_config), anyio_backend, free_tcp_port) as server,
            connect(as_user(server, "alice")) as alice,
        ):
            await subscribe(alice, "room:1")
            requests = [
                {"method": "publish", "channel": "news", "data": 1},
                {"method": "broadcast", "channels": ["news", "bad name"], "data": 2},
                {"method": "history", "channel": "news"},
                {"method": "presence", "channel": "room:1", "count_only": True},
                {"method": "presence", "channel": "news"},
                {"method": "unsubscribe", "user": "alice", "channel": "room:1"},
                {"method": "publish", "channel": "closed:x", "data": "y" * 70_000},
                {"method": "disconnect", "user": "nobody"},
            ]
            status, reply = await post(server, "/api/batch", {"requests": requests}, AUTH)
            assert status == 200, reply
            replies = reply["replies"]
            assert len(replies) == len(requests)
            assert (replies[0]["type"], replies[0]["offset"]) == ("reply", 1)
            assert [r.get("offset") for r in replies[1]["results"]] == [2, None]
            assert [m["data"] for m in replies[2]["messages"]] == [1, 2]
            assert (replies[3]["client_count"], replies[3]["user_count"]) == (1, 1)
            assert (replies[4]["type"], replies[4]["code"]) == ("error", 206)
            assert replies[5] == {"type": "reply"}
            assert (replies[6]["type"], replies[6]["code"]) == ("error", 205)
            assert replies[7] == {"type": "reply"}
            assert (await alice.receive_object())["code"] == 210
            metrics = (await http_exchange(server, "GET", "/metrics"))[1].decode()
            assert 'clarion_errors_total{code="206"} 1.0' in metrics


async def test_a_batch_without_keys_refuses_what_needs_one_and_runs_the_rest(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with running_server(settings(BrokerConfig()), anyio_backend, free_tcp_port) as server:
            requests = [
                {"method": "disconnect", "user": "alice"},
                {"method": "publish", "channel": "closed:x", "data": 1},
                {"method": "publish", "channel": "news", "data": 1},
            ]
            status, reply = await post(server, "/api/batch", {"requests": requests})
            assert status == 200
            codes = [answer.get("code") for answer in reply["replies"]]
            assert codes == [106, 202, None]


@pytest.mark.parametrize(
    "body",
    [
        {"requests": [{"method": "publish", "channel": "c", "data": 1}] * 101},
        {"requests": [{"method": "ping"}]},
        {"requests": [{"channel": "c", "data": 1}]},
        {"requests": "all"},
        {"requests": [{"method": "publish", "channel": "c"}]},
        {},
    ],
)
async def test_a_bad_batch_is_refused_whole(
    anyio_backend: Backend, free_tcp_port: int, body: object
) -> None:
    with anyio.fail_after(20):
        async with (
            running_server(settings(BrokerConfig()), anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as client,
        ):
            await subscribe(client, "c")
            status, reply = await post(server, "/api/batch", body)
            assert (status, reply["code"]) == (400, 101)
            await client.request({"type": "ping", "id": "nothing published"})


async def test_a_ban_is_replaced_by_a_later_one_and_lifted_by_a_past_one(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(20):
        async with running_server(
            users_config(broker_config), anyio_backend, free_tcp_port
        ) as server:
            long_ban = {"user": "mallory", "until": time.time() + 3600}
            assert (await post(server, "/api/disconnect", long_ban, AUTH))[0] == 200
            short_ban = {"user": "mallory", "until": time.time() + 0.5}
            assert (await post(server, "/api/disconnect", short_ban, AUTH))[0] == 200
            await anyio.sleep(0.7)
            async with connect(as_user(server, "mallory")):
                pass  # the shorter ban replaced the longer one, and is over
            assert (await post(server, "/api/disconnect", long_ban, AUTH))[0] == 200
            with pytest.raises(HandshakeRefused):
                async with connect(as_user(server, "mallory")):
                    pass
            lifted = {"user": "mallory", "until": time.time() - 1}
            assert (await post(server, "/api/disconnect", lifted, AUTH))[0] == 200
            async with connect(as_user(server, "mallory")):
                pass


async def test_the_channel_list_never_names_a_channel_an_anonymous_caller_may_not_see(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = open_api_with_users()
    with anyio.fail_after(20):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            connect(as_user(server, "alice")) as alice,
        ):
            for channel in ("closed:launch", "closed:merger", "news", "zz"):
                await subscribe(alice, channel)
            for limit in (1, 2, 3):
                seen, cursors, cursor = [], [], ""
                while True:
                    query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
                    _, page = await http_call(server, "GET", f"/api/channels?{query}")
                    seen += [item["channel"] for item in page["channels"]]
                    cursor = page["cursor"]
                    if cursor is None:
                        break
                    cursors.append(cursor)
                assert seen == ["news", "zz"]
                assert set(cursors) <= {"news", "zz"}
            _, probe = await http_call(server, "GET", "/api/channels?prefix=closed:&limit=1")
            assert probe == {"type": "reply", "channels": [], "cursor": None}
