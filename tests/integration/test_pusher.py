"""The Pusher door with the real libraries: pusher-js (npm) in Node as the client, the
``pusher`` library (PyPI) as the app's backend (its HTTP API calls and its
authorization endpoint), against a real hypercorn, on the memory broker and on Redis."""

from __future__ import annotations

import base64
import json
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pusher
import pytest

from service.settings import AppSettings, AppWebhookSettings, ServerSettings, Settings
from tests.integration.test_commands import process
from tests.integration.test_redis_nodes import BIN, OTHER
from tests.support.pusherjs import WebhookReceiver, auth_app, open_pusherjs, serving
from tests.support.redis import free_port
from tests.support.server import Server, http_call, running_server
from tests.support.wsclient import connect, subscribe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from channels.config import BrokerConfig
    from service.runner import Backend
    from tests.support.pusherjs import PusherJS

SECRET = "0123456789abcdef0123"
OTHER_SECRET = "fedcba9876543210fedc"


def app(app_id: str = "1", key: str = "app-key", **options: Any) -> AppSettings:
    return AppSettings(id=app_id, key=key, secret=SECRET, **options)


def settings(broker: BrokerConfig, *apps: AppSettings, **server: Any) -> Settings:
    return Settings(
        broker=broker,
        apps=list(apps) or [app(client_events=True)],
        server=ServerSettings(**server),
    )


def backend(server: Server, app_id: str = "1", key: str = "app-key") -> pusher.Pusher:
    """The app's backend, as the Pusher docs set up the ``pusher`` library."""
    return pusher.Pusher(
        app_id=app_id, key=key, secret=SECRET, host="127.0.0.1", port=server.port, ssl=False
    )


async def call(function: Any, *args: Any) -> Any:
    """Run a call of the (blocking) ``pusher`` library in a thread."""
    return await anyio.to_thread.run_sync(partial(function, *args))


@asynccontextmanager
async def door(
    config: Settings, anyio_backend: Backend, port: int
) -> AsyncIterator[tuple[Server, PusherJS]]:
    """A Clarion with Pusher apps on 127.0.0.1:*port*, and pusher-js in Node."""
    async with running_server(config, anyio_backend, port) as server, open_pusherjs() as driver:
        yield server, driver


@asynccontextmanager
async def app_backend(
    server: Server, anyio_backend: Backend
) -> AsyncIterator[tuple[pusher.Pusher, dict[str, dict[str, Any]], str]]:
    """The app's backend: its ``pusher`` client, the users its authorization endpoint
    signs (by socket id, filled in by the test), and that endpoint's base URL."""
    client = backend(server)
    users: dict[str, dict[str, Any]] = {}
    async with serving(auth_app(client, users), anyio_backend, free_port()) as url:
        yield client, users, url


async def connect_js(driver: PusherJS, name: str, server: Server, **extra: Any) -> str:
    await driver.send(
        op="connect", **{"as": name}, key=extra.pop("key", "app-key"), port=server.port, **extra
    )
    return await driver.connected(name)


async def subscribed(driver: PusherJS, name: str, channel: str) -> dict[str, Any]:
    await driver.send(op="subscribe", **{"as": name}, channel=channel)
    return await driver.event(name, channel, "pusher:subscription_succeeded")


async def test_pusher_js_gets_what_the_pusher_library_triggers(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(30):
        async with door(settings(broker_config), anyio_backend, free_tcp_port) as (server, driver):
            await connect_js(driver, "a", server)
            await subscribed(driver, "a", "news")
            await subscribed(driver, "a", "sports")
            client = backend(server)
            # One event to many channels, then a batch, then one to a single channel.
            assert await call(client.trigger, ["news", "sports"], "scored", {"n": 1}) == {}
            batch = [
                {"channel": "news", "name": "headline", "data": {"title": "x"}},
                {"channel": "sports", "name": "headline", "data": "plain text"},
            ]
            assert await call(client.trigger_batch, batch) == {}
            await call(client.trigger, "news", "last", {"n": 2})
            got = await driver.event("a", "news", "last")
            assert got["data"] == {"n": 2}
            news = [r for r in driver.reports if r.get("channel") == "news" and "event" in r]
            assert [(r["event"], r["data"]) for r in news[1:]] == [
                ("scored", {"n": 1}),
                ("headline", {"title": "x"}),
                ("last", {"n": 2}),
            ]
            assert driver.seen("a", "sports", "headline")[0]["data"] == "plain text"
            # What the HTTP API says of the channels.
            info = await call(client.channels_info, None, ["subscription_count"])
            assert info == {
                "channels": {"news": {"subscription_count": 1}, "sports": {"subscription_count": 1}}
            }
            assert await call(client.channel_info, "news", ["subscription_count"]) == {
                "occupied": True,
                "subscription_count": 1,
            }
            assert await call(client.channel_info, "empty") == {"occupied": False}


async def test_private_and_presence_channels_are_authorized_by_the_apps_backend(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(30):
        async with door(settings(broker_config), anyio_backend, free_tcp_port) as (server, driver):
            async with app_backend(server, anyio_backend) as (client, users, auth_url):
                auth = f"{auth_url}/auth"
                ann = await connect_js(driver, "ann", server, auth=auth)
                bob = await connect_js(driver, "bob", server, auth=auth)
                users[ann] = {"id": "ann", "user_info": {"name": "Ann"}}
                users[bob] = {"id": "bob", "user_info": {"name": "Bob"}}
                await subscribed(driver, "ann", "private-orders")
                joined = await subscribed(driver, "ann", "presence-room")
                assert joined["data"] == {
                    "count": 1,
                    "ids": ["ann"],
                    "me": {"id": "ann", "info": {"name": "Ann"}},
                }
                joined = await subscribed(driver, "bob", "presence-room")
                assert joined["data"]["ids"] == ["ann", "bob"]
                added = await driver.event("ann", "presence-room", "pusher:member_added")
                assert added["data"] == {"id": "bob", "info": {"name": "Bob"}}
                assert await call(client.users_info, "presence-room") == {
                    "users": [{"id": "ann"}, {"id": "bob"}]
                }
                assert await call(client.channel_info, "presence-room", ["user_count"]) == {
                    "occupied": True,
                    "user_count": 2,
                }
                await call(client.trigger, "private-orders", "created", {"id": 7})
                created = await driver.event("ann", "private-orders", "created")
                assert created["data"] == {"id": 7}
                await driver.send(op="disconnect", **{"as": "bob"})
                removed = await driver.event("ann", "presence-room", "pusher:member_removed")
                assert removed["data"]["id"] == "bob"


async def test_client_events_reach_the_others_never_the_sender(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(30):
        async with door(settings(broker_config), anyio_backend, free_tcp_port) as (server, driver):
            async with app_backend(server, anyio_backend) as (client, users, auth_url):
                ann = await connect_js(driver, "ann", server, auth=f"{auth_url}/auth")
                await connect_js(driver, "bob", server, auth=f"{auth_url}/auth")
                users[ann] = {"id": "ann"}
                for name in ("ann", "bob"):
                    await subscribed(driver, name, "private-chat")
                    await subscribed(driver, name, "presence-chat")
                await driver.send(
                    op="trigger",
                    **{"as": "ann"},
                    channel="private-chat",
                    event="client-typing",
                    data={"who": "ann"},
                )
                typing = await driver.event("bob", "private-chat", "client-typing")
                assert typing["data"] == {"who": "ann"}
                await driver.send(
                    op="trigger",
                    **{"as": "ann"},
                    channel="presence-chat",
                    event="client-wave",
                    data={},
                )
                await driver.event("bob", "presence-chat", "client-wave")
                wave = await driver.expect(lambda r: r.get("of") == "client-wave")
                assert (wave["as"], wave["sent_by"]) == ("bob", "ann")
                # Ann's own events never came back to her: a server event after them did.
                await call(client.trigger, "private-chat", "after", {})
                await driver.event("ann", "private-chat", "after")
                assert driver.seen("ann", "private-chat", "client-typing") == []
                assert driver.seen("ann", "presence-chat", "client-wave") == []


async def test_socket_id_leaves_the_connection_that_caused_an_event_out(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(30):
        async with door(settings(broker_config), anyio_backend, free_tcp_port) as (server, driver):
            ann = await connect_js(driver, "ann", server)
            await connect_js(driver, "bob", server)
            for name in ("ann", "bob"):
                await subscribed(driver, name, "news")
            client = backend(server)
            await call(client.trigger, "news", "edited", {"n": 1}, ann)
            await call(client.trigger, "news", "after", {})
            await driver.event("bob", "news", "edited")
            await driver.event("ann", "news", "after")
            assert driver.seen("ann", "news", "edited") == []


async def test_one_engine_behind_both_doors_in_one_order(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    config = settings(broker_config, app(default=True))
    with anyio.fail_after(30):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            open_pusherjs() as driver,
            connect(server.ws_url) as native,
        ):
            await connect_js(driver, "js", server)
            await subscribed(driver, "js", "news")
            await subscribe(native, "news")
            client = backend(server)
            for index in range(3):
                await call(client.trigger, "news", "pushed", {"i": index})
                status, _ = await http_call(
                    server,
                    "POST",
                    "/api/publish",
                    msgspec.json.encode({"channel": "news", "data": {"i": index}}),
                )
                assert status == 200
            seen: list[tuple[str, int]] = []
            while len(seen) < 6:
                got = await driver.expect(
                    lambda r: r.get("channel") == "news" and r.get("event") in ("pushed", "message")
                )
                seen.append((got["event"], got["data"]["i"]))
            assert seen == [(event, i) for i in range(3) for event in ("pushed", "message")]
            natives: list[Any] = []
            while len(natives) < 6:
                for frame in await native.receive_objects():
                    if frame.get("type") == "message":
                        natives.append(frame["data"])
            assert natives[0] == {"event": "pushed", "data": json.dumps({"i": 0})}
            assert natives[1] == {"i": 0}


async def test_apps_are_isolated(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    config = settings(broker_config, app("1", "key-one"), app("2", "key-two"))
    with anyio.fail_after(30):
        async with door(config, anyio_backend, free_tcp_port) as (server, driver):
            await connect_js(driver, "one", server, key="key-one")
            await connect_js(driver, "two", server, key="key-two")
            await subscribed(driver, "one", "news")
            await subscribed(driver, "two", "news")
            await call(backend(server, "1", "key-one").trigger, "news", "for-one", {})
            await call(backend(server, "2", "key-two").trigger, "news", "for-two", {})
            await driver.event("one", "news", "for-one")
            await driver.event("two", "news", "for-two")
            assert driver.seen("one", "news", "for-two") == []
            assert driver.seen("two", "news", "for-one") == []
            # Each app's HTTP API sees its own channels, and takes its own key only.
            with pytest.raises(pusher.errors.PusherBadAuth):
                await call(backend(server, "2", "key-one").trigger, "news", "x", {})


async def test_a_signed_in_user_is_terminated_by_the_backend(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(30):
        async with door(settings(broker_config), anyio_backend, free_tcp_port) as (server, driver):
            async with app_backend(server, anyio_backend) as (client, users, auth_url):
                socket_id = await connect_js(
                    driver, "ann", server, userAuth=f"{auth_url}/user-auth"
                )
                users[socket_id] = {"id": "ann"}
                await driver.send(op="signin", **{"as": "ann"})
                await driver.expect(lambda r: r.get("signed_in") is True)
                await subscribed(driver, "ann", "news")
                assert await call(client.terminate_user_connections, "ann") == {}
                error = await driver.expect(lambda r: r.get("as") == "ann" and "error" in r)
                assert error["error"]["code"] == 4009
                # 4009 is final: pusher-js does not reconnect.
                await driver.expect(
                    lambda r: (
                        (r.get("as") == "ann" and str(r.get("state")).endswith("-> failed"))
                        or str(r.get("state")).endswith("-> disconnected")
                    )
                )


@pytest.mark.parametrize("pair", ["same", "mixed"])
async def test_two_nodes_share_an_apps_channels_through_redis_for_both_doors(
    anyio_backend: Backend, pair: str, redis_broker: BrokerConfig, tmp_path: Path
) -> None:
    """Node A in this process; node B a ``clarion serve`` process on the same backend or
    the other one. Pusher and Clarion clients on both; the backend calls either node."""
    config = settings(redis_broker, app(default=True, client_events=True))
    text = msgspec.yaml.encode(msgspec.to_builtins(config)).decode()
    path = tmp_path / "channels.yaml"
    path.write_text(text.replace(SECRET, "${APP_SECRET}"))
    other = anyio_backend if pair == "same" else OTHER[anyio_backend]
    port_a, port_b = free_port(), free_port()
    argv = [str(BIN / "clarion"), "serve", "--config", str(path), "--backend", other]
    env = {"APP_SECRET": SECRET}
    with anyio.fail_after(60):
        async with (
            running_server(config, anyio_backend, port_a) as a,
            process([*argv, "--bind", f"127.0.0.1:{port_b}"], port_b, tmp_path / "b.log", env),
            open_pusherjs() as driver,
        ):
            b = Server("127.0.0.1", port_b)
            users: dict[str, dict[str, Any]] = {}
            async with serving(auth_app(backend(a), users), anyio_backend, free_port()) as auth:
                ann = await connect_js(driver, "ann", a, auth=f"{auth}/auth")
                bob = await connect_js(driver, "bob", b, auth=f"{auth}/auth")
                users[ann], users[bob] = {"id": "ann"}, {"id": "bob"}
                await subscribed(driver, "ann", "presence-room")
                joined = await subscribed(driver, "bob", "presence-room")
                assert joined["data"]["ids"] == ["ann", "bob"]
                added = await driver.event("ann", "presence-room", "pusher:member_added")
                assert added["data"]["id"] == "bob"
                async with connect(a.ws_url.replace(str(port_a), str(port_b))) as native:
                    await subscribe(native, "news")
                    await subscribed(driver, "ann", "news")
                    # The backend calls node B; a Clarion publisher node A.
                    await call(backend(b).trigger, "news", "pushed", {"i": 1})
                    body = msgspec.json.encode({"channel": "news", "data": {"i": 2}})
                    assert (await http_call(a, "POST", "/api/publish", body))[0] == 200
                    await driver.event("ann", "news", "pushed")
                    got = await driver.event("ann", "news", "message")
                    assert got["data"] == {"i": 2}
                    frames: list[Any] = []
                    while len(frames) < 2:
                        objects = await native.receive_objects()
                        frames += [f["data"] for f in objects if f.get("type") == "message"]
                    assert frames == [{"event": "pushed", "data": '{"i": 1}'}, {"i": 2}]
                # A client event from node B reaches node A, and not its sender.
                await driver.send(
                    op="trigger",
                    **{"as": "bob"},
                    channel="presence-room",
                    event="client-hi",
                    data={},
                )
                await driver.event("ann", "presence-room", "client-hi")
                assert await call(backend(b).users_info, "presence-room") == {
                    "users": [{"id": "ann"}, {"id": "bob"}]
                }
                await driver.send(op="disconnect", **{"as": "bob"})
                removed = await driver.event("ann", "presence-room", "pusher:member_removed")
                assert removed["data"]["id"] == "bob"
                assert driver.seen("bob", "presence-room", "client-hi") == []


async def test_pusher_js_reconnects_after_a_restart_and_pings_when_quiet(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    config = settings(broker_config, app(activity_timeout_seconds=1))
    with anyio.fail_after(30):
        async with open_pusherjs() as driver:
            async with running_server(config, anyio_backend, free_tcp_port) as server:
                await connect_js(driver, "a", server)
                await subscribed(driver, "a", "news")
                # Quiet for an activity timeout: pusher-js pings, Clarion answers, twice.
                for _ in range(2):
                    await driver.expect(lambda r: r.get("pong") is True, seconds=5)
                assert [r for r in driver.reports if "-> connecting" in str(r.get("state"))] == []
            # The server drained (4200: reconnect at once) and is gone; it comes back.
            await driver.expect(
                lambda r: (
                    "-> connecting" in str(r.get("state"))
                    or "-> unavailable" in str(r.get("state"))
                )
            )
            async with running_server(config, anyio_backend, free_tcp_port) as server:
                await driver.connected("a", seconds=20)
                await driver.event("a", "news", "pusher:subscription_succeeded")
                await call(backend(server).trigger, "news", "back", {})
                await driver.event("a", "news", "back")


async def test_webhooks_in_pushers_format_pass_the_pusher_librarys_validation(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    port = free_port()
    hooks = [
        AppWebhookSettings(
            url=f"http://127.0.0.1:{port}/hooks",
            events=[
                "channel_occupied",
                "channel_vacated",
                "member_added",
                "member_removed",
                "client_event",
            ],
            batch_seconds=0.01,
        )
    ]
    config = settings(broker_config, app(client_events=True, webhooks=hooks))
    with anyio.fail_after(30):
        async with door(config, anyio_backend, free_tcp_port) as (server, driver):
            client = backend(server)
            receiver = WebhookReceiver(client)
            users: dict[str, dict[str, Any]] = {}
            async with (
                serving(receiver, anyio_backend, port),
                serving(auth_app(client, users), anyio_backend, free_port()) as auth,
            ):
                ann = await connect_js(driver, "ann", server, auth=f"{auth}/auth")
                bob = await connect_js(driver, "bob", server, auth=f"{auth}/auth")
                users[ann], users[bob] = {"id": "ann"}, {"id": "bob"}
                await subscribed(driver, "ann", "presence-room")
                await subscribed(driver, "bob", "presence-room")
                await driver.send(
                    op="trigger",
                    **{"as": "ann"},
                    channel="presence-room",
                    event="client-hi",
                    data={"x": 1},
                )
                sent = await receiver.wait_for(lambda e: e["name"] == "client_event")
                assert sent == {
                    "name": "client_event",
                    "channel": "presence-room",
                    "event": "client-hi",
                    "data": '{"x":1}',
                    "socket_id": ann,
                    "user_id": "ann",
                }
                await driver.send(op="disconnect", **{"as": "bob"})
                await receiver.wait_for(lambda e: e["name"] == "member_removed")
                await driver.send(op="unsubscribe", **{"as": "ann"}, channel="presence-room")
                await receiver.wait_for(lambda e: e["name"] == "channel_vacated")
                seen = [(e["name"], e.get("user_id")) for e in receiver.events]
                # Occupancy is decided in Redis, apart from the members' events: each kind
                # comes in its order.
                occupancy = [e for e in seen if e[0].startswith("channel_")]
                assert occupancy == [("channel_occupied", None), ("channel_vacated", None)]
                assert [e for e in seen if e not in occupancy] == [
                    ("member_added", "ann"),
                    ("member_added", "bob"),
                    ("client_event", "ann"),
                    ("member_removed", "bob"),
                    ("member_removed", "ann"),
                ]
                assert receiver.invalid == 0


async def test_cache_channels_give_a_new_subscriber_the_last_event_or_a_miss(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    port = free_port()
    hook = AppWebhookSettings(
        url=f"http://127.0.0.1:{port}/hooks", events=["cache_miss"], batch_seconds=0.01
    )
    config = settings(broker_config, app(webhooks=[hook]))
    with anyio.fail_after(30):
        async with door(config, anyio_backend, free_tcp_port) as (server, driver):
            client = backend(server)
            receiver = WebhookReceiver(client)
            async with serving(receiver, anyio_backend, port):
                await call(client.trigger, "cache-scores", "score", {"home": 1})
                await call(client.trigger, "cache-scores", "score", {"home": 2})
                await connect_js(driver, "a", server)
                await subscribed(driver, "a", "cache-scores")
                last = await driver.event("a", "cache-scores", "score")
                assert last["data"] == {"home": 2}
                await subscribed(driver, "a", "cache-empty")
                await driver.event("a", "cache-empty", "pusher:cache_miss")
                # Live events follow, each once.
                await call(client.trigger, "cache-scores", "score", {"home": 3})
                await driver.event("a", "cache-scores", "score")
                scores = [r["data"]["home"] for r in driver.seen("a", "cache-scores", "score")]
                assert scores == [2, 3]
                assert driver.seen("a", "cache-scores", "pusher:cache_miss") == []
                # The app's backend hears of the miss.
                miss = await receiver.wait_for(lambda e: e["name"] == "cache_miss")
                assert miss == {"name": "cache_miss", "channel": "cache-empty"}
                assert len(receiver.events) == 1


async def test_a_user_with_two_connections_is_one_member(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    port = free_port()
    hook = AppWebhookSettings(
        url=f"http://127.0.0.1:{port}/hooks",
        events=["member_added", "member_removed"],
        batch_seconds=0.01,
    )
    config = settings(broker_config, app(webhooks=[hook]))
    with anyio.fail_after(30):
        async with door(config, anyio_backend, free_tcp_port) as (server, driver):
            client = backend(server)
            receiver = WebhookReceiver(client)
            users: dict[str, dict[str, Any]] = {}
            async with (
                serving(receiver, anyio_backend, port),
                serving(auth_app(client, users), anyio_backend, free_port()) as auth,
            ):
                for name in ("bob", "tab1", "tab2"):
                    socket_id = await connect_js(driver, name, server, auth=f"{auth}/auth")
                    users[socket_id] = {"id": "bob" if name == "bob" else "ann"}
                await subscribed(driver, "bob", "presence-room")
                await subscribed(driver, "tab1", "presence-room")
                await driver.event("bob", "presence-room", "pusher:member_added")
                joined = await subscribed(driver, "tab2", "presence-room")
                assert (joined["data"]["count"], joined["data"]["ids"]) == (2, ["ann", "bob"])
                # Ann closes one tab: she is still there for Bob, and for herself.
                await driver.send(op="disconnect", **{"as": "tab2"})
                await driver.expect(
                    lambda r: r.get("as") == "tab2" and "disconnected" in str(r.get("state"))
                )
                await call(client.trigger, "presence-room", "after", {})
                for name in ("bob", "tab1"):
                    if not driver.seen(name, "presence-room", "after"):
                        await driver.event(name, "presence-room", "after")
                    await driver.send(op="members", **{"as": name}, channel="presence-room")
                    members = await driver.expect(lambda r: "members" in r)
                    assert members["as"] == name
                    assert members["members"] == {"count": 2, "ids": ["ann", "bob"]}
                assert driver.seen("bob", "presence-room", "pusher:member_removed") == []
                assert driver.seen("tab1", "presence-room", "pusher:member_added") == []
                # Her last tab closes: she leaves, once.
                await driver.send(op="disconnect", **{"as": "tab1"})
                removed = await driver.event("bob", "presence-room", "pusher:member_removed")
                assert removed["data"]["id"] == "ann"
                await receiver.wait_for(lambda e: e["name"] == "member_removed")
                names = [(e["name"], e["user_id"]) for e in receiver.events]
                assert names == [
                    ("member_added", "bob"),
                    ("member_added", "ann"),
                    ("member_removed", "ann"),
                ]


async def test_the_backend_sends_to_a_signed_in_user_and_to_no_one_else(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(30):
        async with door(settings(broker_config), anyio_backend, free_tcp_port) as (server, driver):
            async with app_backend(server, anyio_backend) as (client, users, auth):
                for name in ("ann", "bob"):
                    socket_id = await connect_js(driver, name, server, userAuth=f"{auth}/user-auth")
                    users[socket_id] = {"id": name}
                    await driver.send(op="signin", **{"as": name})
                    # Signed in, pusher-js subscribes to the user's own channel.
                    subscribed = await driver.expect(lambda r: "subscribed" in r)
                    assert subscribed == {"as": name, "subscribed": f"#server-to-user-{name}"}
                await call(client.send_to_user, "ann", "direct", {"n": 1})
                got = await driver.expect(lambda r: r.get("user_event") == "direct")
                assert (got["as"], got["data"]) == ("ann", {"n": 1})
                await call(client.send_to_user, "bob", "direct", {"n": 2})
                got = await driver.expect(lambda r: r.get("user_event") == "direct")
                assert (got["as"], got["data"]) == ("bob", {"n": 2})
            # Without signing in as ann, her channel is refused.
            async with connect(f"ws://127.0.0.1:{server.port}/app/app-key?protocol=7") as raw:
                await raw.receive_object()
                subscribe = {"channel": "#server-to-user-ann"}
                await raw.send_json({"event": "pusher:subscribe", "data": subscribe})
                refused = await raw.receive_object()
                assert refused["event"] == "pusher:subscription_error"
                assert json.loads(refused["data"])["code"] == 202


async def test_an_encrypted_channel_is_relayed_for_pusher_js_to_decrypt(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    master_key = base64.b64encode(b"k" * 32).decode()
    with anyio.fail_after(30):
        async with door(settings(broker_config), anyio_backend, free_tcp_port) as (server, driver):
            client = pusher.Pusher(
                app_id="1",
                key="app-key",
                secret=SECRET,
                host="127.0.0.1",
                port=server.port,
                ssl=False,
                encryption_master_key_base64=master_key,
            )
            async with serving(auth_app(client, {}), anyio_backend, free_port()) as auth:
                await connect_js(driver, "a", server, auth=f"{auth}/auth")
                await subscribed(driver, "a", "private-encrypted-vault")
                await call(client.trigger, "private-encrypted-vault", "secret", {"code": 42})
                got = await driver.event("a", "private-encrypted-vault", "secret")
                assert got["data"] == {"code": 42}
