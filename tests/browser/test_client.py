"""client.js in a real Chromium, against a real Clarion.

Each test loads a page of its own origin (`serve_page`) that imports ``client.js`` from
the Clarion server, as an application's page would, then drives it with small scripts
(`page.evaluate`) and checks what the page saw.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio
import pytest

from channels.config import ChannelRule, History
from service.settings import AuthSettings, ServerSettings, Settings
from tests.browser.driver import open_browser
from tests.browser.pages import HTML, JAVASCRIPT, client_js, client_page, serve_files, serve_page
from tests.browser.scripted import scripted_server
from tests.support.auth import OPEN_API, SECRET, token
from tests.support.redis import free_port
from tests.support.server import http_publish, running_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from playwright.sync_api import Page

    from channels.config import BrokerConfig
    from service.runner import Backend
    from tests.browser.driver import Browser
    from tests.browser.scripted import ScriptedServer

#: Reconnect fast: the tests wait for reconnects.
FAST: Final = "{minReconnectDelayMs: 50, maxReconnectDelayMs: 300}"


async def open_client_page(browser: Browser, url: str) -> Page:
    """Open *url* (a `client_page`) and wait until it imported client.js."""
    page = await browser.new_page()
    await browser.call(page.goto, url)
    await browser.call(page.wait_for_function, "() => window.clarion || window.importError")
    failure = await browser.call(page.evaluate, "() => window.importError ?? null")
    assert failure is None, (failure, browser.console)
    return page


async def wait_for(browser: Browser, page: Page, predicate: str, arg: Any = None) -> None:
    """Wait until the JavaScript function *predicate* (of *arg*) holds in *page*.

    Raises:
        AssertionError: if it does not within `PAGE_TIMEOUT_MS`, with the page's console.
    """
    try:
        await browser.call(page.wait_for_function, predicate, arg=arg)
    except Exception as exc:  # Playwright's TimeoutError (or a page that crashed)
        console = "\n".join(browser.console)
        raise AssertionError(
            f"{predicate} ({arg!r}) never held; the page logged:\n{console}"
        ) from exc


REQUESTS: Final = """
async (url) => {
  const { Clarion, ClarionError, ErrorCode } = window.clarion;
  const client = new Clarion(url);
  const states = [];
  client.on("state", ({ state }) => states.push(state));
  const caught = async (promise) => {
    try {
      await promise;
      return null;
    } catch (error) {
      const { code, codeName, message } = error;
      return { typed: error instanceof ClarionError, code, codeName, message };
    }
  };
  const got = [];
  const sub = client.subscribe("room:1", (data, message) => got.push([message.offset, data]));
  const ready = await sub.ready;
  const published = await client.publish("room:1", { text: "hi" });
  const keyed = await client.publish("room:1", { text: "once" }, { idempotencyKey: "k-1" });
  const retried = await client.publish("room:1", { text: "once" }, { idempotencyKey: "k-1" });
  const history = await client.history("room:1", { limit: 5 });
  const clients = await client.presence("room:1");
  const roundTrip = await client.ping();
  const refused = client.subscribe("weather", () => {});
  const errors = {
    subscribe: await caught(refused.ready),
    publish: await caught(client.publish("weather", 1)),
    presence: await caught(client.presence("news")),
    name: await caught(client.publish("no spaces", 1)),
    twice: await caught((async () => client.subscribe("room:1", () => {}))()),
  };
  // Quiet for a while: the server pings every 0.2 s, and the client must answer.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const afterPings = [client.state, await client.publish("room:1", "still here")];
  client.close();
  errors.closed = await caught(client.publish("room:1", 1));
  return {
    ready, published, keyed, retried, history, clients, roundTrip, errors, afterPings, got, states,
    refusedActive: refused.active, codes: [ErrorCode.CHANNEL_NOT_FOUND, ErrorCode.TIMEOUT],
  };
}
"""


async def test_requests_resolve_with_replies_and_errors_are_typed(
    anyio_backend: Backend, free_tcp_port: int, profile: Path
) -> None:
    server_config = ServerSettings(ping_interval_seconds=0.2, pong_timeout_seconds=1)
    config = Settings(
        server=server_config,
        channels=[
            ChannelRule(match="room:*", presence=True, history=History(size=10)),
            ChannelRule(match="news"),
        ],
    )
    with anyio.fail_after(30):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            serve_page(client_page(f"http://127.0.0.1:{free_tcp_port}/client.js")) as url,
            open_browser(profile) as browser,
        ):
            page = await open_client_page(browser, url)
            seen = await browser.call(page.evaluate, REQUESTS, server.ws_url)
    epoch = seen["ready"]["epoch"]
    assert seen["ready"] == {"channel": "room:1", "offset": 0, "epoch": epoch}
    published = {"channel": "room:1", "offset": 1, "epoch": epoch, "duplicate": False}
    assert seen["published"] == published
    assert seen["keyed"] == {**published, "offset": 2}
    assert seen["retried"] == {**published, "offset": 2, "duplicate": True}
    assert seen["history"] == {
        "channel": "room:1",
        "offset": 2,
        "epoch": epoch,
        "messages": [
            {"offset": 1, "data": {"text": "hi"}},
            {"offset": 2, "data": {"text": "once"}},
        ],
    }
    assert [client["user"] for client in seen["clients"]] == [None]
    assert seen["roundTrip"] >= 0
    errors = seen["errors"]
    assert {name: (error["typed"], error["code"]) for name, error in errors.items()} == {
        "subscribe": (True, 201),
        "publish": (True, 201),
        "presence": (True, 206),
        "name": (True, 200),
        "twice": (True, 203),
        "closed": (True, 903),
    }
    assert errors["subscribe"]["codeName"] == "CHANNEL_NOT_FOUND"
    assert errors["subscribe"]["message"] == "no channel rule matches 'weather'"
    assert errors["closed"]["codeName"] == "CLOSED"
    assert seen["refusedActive"] is False
    assert seen["codes"] == [201, 900]
    # Pinged every 0.2 s for 1.5 s, the client answered each time and kept its connection.
    assert seen["afterPings"] == ["connected", {**published, "offset": 3}]
    assert seen["got"] == [[1, {"text": "hi"}], [2, {"text": "once"}], [3, "still here"]]
    assert seen["states"] == ["connecting", "connected", "closed"]
    assert server.app is not None
    assert server.app.counters.disconnects["no_pong"] == 0


FEED: Final = f"""
([url, channel]) => {{
  const {{ Clarion }} = window.clarion;
  window.client = new Clarion(url, {FAST});
  window.states = [];
  window.client.on("state", ({{ state, closeCode }}) => {{
    window.states.push([state, closeCode ?? null]);
  }});
  window.got = [];
  window.resubscribed = [];
  const onMessage = (data, message) => window.got.push([message.offset, data]);
  const sub = window.client.subscribe(channel, onMessage, {{
    onResubscribed: (info) => window.resubscribed.push(info),
  }});
  return sub.ready;
}}
"""


async def test_after_a_node_restart_the_client_recovers_what_it_missed_once_and_in_order(
    anyio_backend: Backend, free_tcp_port: int, profile: Path, redis_broker: BrokerConfig
) -> None:
    # With Redis, the channel's stream (its epoch, offsets and history) outlives the node.
    # The page's client is connected to node A; while A is down, messages are published
    # through node B, which stays up (and serves client.js).
    config = Settings(
        broker=redis_broker, channels=[ChannelRule(match="*", history=History(size=100))]
    )
    other_port = free_port()
    with anyio.fail_after(60):
        async with (
            running_server(config, anyio_backend, other_port) as other,
            serve_page(client_page(f"http://127.0.0.1:{other_port}/client.js")) as url,
            open_browser(profile) as browser,
        ):
            page = await open_client_page(browser, url)
            async with running_server(config, anyio_backend, free_tcp_port) as node:
                ready = await browser.call(page.evaluate, FEED, [node.ws_url, "feed"])
                for index in range(3):
                    await http_publish(node, "feed", index)
                await wait_for(browser, page, "n => window.got.length >= n", 3)
            # Node A drained its clients with 1001 and is gone.
            await wait_for(browser, page, "() => window.client.state !== 'connected'")
            for index in range(3, 8):
                await http_publish(other, "feed", index)
            assert await browser.call(page.evaluate, "() => window.got.length") == 3
            async with running_server(config, anyio_backend, free_tcp_port) as node:
                await wait_for(browser, page, "n => window.got.length >= n", 8)
                await http_publish(node, "feed", 8)
                await wait_for(browser, page, "n => window.got.length >= n", 9)
                got = await browser.call(page.evaluate, "() => window.got")
                resubscribed = await browser.call(page.evaluate, "() => window.resubscribed")
                states = await browser.call(page.evaluate, "() => window.states")
    assert got == [[offset, offset - 1] for offset in range(1, 10)], browser.console
    epoch = ready["epoch"]
    assert resubscribed == [{"recovered": True, "offset": 8, "epoch": epoch}]
    assert states[:3] == [["connecting", None], ["connected", None], ["disconnected", 1001]]
    assert states[-1] == ["connected", None]


CONNECT: Final = """
async (url) => {
  const { Clarion, ClarionError } = window.clarion;
  const client = new Clarion(url, {
    requestTimeoutMs: 2000, minReconnectDelayMs: 100, maxReconnectDelayMs: 200,
  });
  const states = [];
  client.on("state", ({ state, error }) => states.push([state, error?.code ?? null]));
  try {
    const { offset } = await client.publish("news", { from: location.origin });
    return { offset, states };
  } catch (error) {
    const { code, message } = error;
    return { typed: error instanceof ClarionError, code, message, states };
  } finally {
    client.close();
  }
}
"""


@pytest.mark.parametrize("listed", [True, False], ids=["listed", "not_listed"])
async def test_a_page_of_another_origin_connects_only_when_server_allowed_origins_lists_it(
    anyio_backend: Backend, free_tcp_port: int, profile: Path, listed: bool
) -> None:
    with anyio.fail_after(30):
        async with (
            serve_page(client_page(f"http://127.0.0.1:{free_tcp_port}/client.js")) as url,
            open_browser(profile) as browser,
        ):
            origin = url.removesuffix("/")
            allowed = [origin] if listed else ["https://app.example.com"]
            config = Settings(server=ServerSettings(allowed_origins=allowed))
            async with running_server(config, anyio_backend, free_tcp_port) as server:
                # client.js itself loads from any origin (Access-Control-Allow-Origin: *).
                page = await open_client_page(browser, url)
                seen = await browser.call(page.evaluate, CONNECT, server.ws_url)
                assert server.app is not None
                refused = server.app.counters.refused[111]
    if listed:
        assert seen["offset"] == 1
        assert seen["states"][:2] == [["connecting", None], ["connected", None]]
        assert refused == 0
    else:
        # The browser hides the 403 (code 111): the client reports a failed connection.
        assert (seen["typed"], seen["code"]) == (True, 902), seen
        assert seen["message"].startswith("not connected within 2000 ms: could not connect")
        assert ["disconnected", 902] in seen["states"]
        assert ["connected", None] not in seen["states"]
        assert refused >= 1


TOKENS: Final = f"""
async ([url, tokens, short, long, secretToken]) => {{
  const {{ Clarion }} = window.clarion;
  window.tokensGiven = 0;
  window.states = [];
  window.got = [];
  window.resubscribed = [];
  // Gets its tokens from getToken(): a short one first, then a long one after 4001.
  const getToken = async () => tokens[window.tokensGiven++];
  const renewed = new Clarion(url, {{ ...{FAST}, getToken }});
  renewed.on("state", ({{ state, closeCode }}) => window.states.push([state, closeCode ?? null]));
  window.renewed = renewed;
  const sub = renewed.subscribe("inbox", (data) => window.got.push(data), {{
    onResubscribed: ({{ recovered }}) => window.resubscribed.push(recovered),
  }});
  await sub.ready;
  // Starts with the short token, then refreshes before it expires.
  const refreshed = new Clarion(url, {{ ...{FAST}, token: short }});
  window.refreshedStates = [];
  refreshed.on("state", ({{ state }}) => window.refreshedStates.push(state));
  window.refreshed = refreshed;
  await refreshed.refresh(long);
  // A private channel's reads need its subscription token, as a subscribe does.
  const code = (promise) => promise.then(() => null, (error) => error.code);
  const privateReads = {{
    historyWithout: await code(renewed.history("secret:1")),
    presenceWithout: await code(renewed.presence("secret:1")),
    history: (await renewed.history("secret:1", {{ token: secretToken }})).messages,
    presence: await renewed.presence("secret:1", {{ token: secretToken }}),
  }};
  const users = (await renewed.presence("inbox")).map((client) => client.user);
  return {{ users, privateReads }};
}}
"""


async def test_a_token_goes_in_the_handshake_and_an_expired_one_is_renewed(
    anyio_backend: Backend, free_tcp_port: int, profile: Path
) -> None:
    config = Settings(
        server=OPEN_API,
        auth=AuthSettings(required=True, secret=SECRET),
        channels=[
            ChannelRule(match="secret:*", private=True, presence=True, history=History(size=10)),
            ChannelRule(match="*", presence=True, history=History(size=10)),
        ],
    )
    with anyio.fail_after(30):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            serve_page(client_page(f"http://127.0.0.1:{free_tcp_port}/client.js")) as url,
            open_browser(profile) as browser,
        ):
            page = await open_client_page(browser, url)
            await http_publish(server, "secret:1", "classified")
            # Made now, not before the browser started: the short ones live 2 to 3 s.
            tokens = [token("alice", seconds=3), token("alice", seconds=60)]
            short, long = token("bob", seconds=3), token("bob", seconds=60)
            secret_token = token("alice", channels=["secret:1"])
            arguments = [server.ws_url, tokens, short, long, secret_token]
            # The page is of another origin: a token in the query string would be refused
            # (server.allowed_origins is empty); in a subprotocol it is not.
            first = await browser.call(page.evaluate, TOKENS, arguments)
            assert first["users"] == ["alice"]
            assert first["privateReads"] == {
                "historyWithout": 202,
                "presenceWithout": 202,
                "history": [{"offset": 1, "data": "classified"}],
                "presence": [],
            }
            await http_publish(server, "inbox", "before")
            await wait_for(browser, page, "() => window.got.length === 1")
            # At the short token's exp the server closes with 4001; the client asks for a
            # new token, reconnects and recovers.
            await wait_for(
                browser,
                page,
                "() => window.resubscribed.length === 1 && window.renewed.state === 'connected'",
            )
            await http_publish(server, "inbox", "after")
            await wait_for(browser, page, "() => window.got.length === 2")
            seen = await browser.call(
                page.evaluate,
                """async () => ({
                  got: window.got, tokensGiven: window.tokensGiven, states: window.states,
                  resubscribed: window.resubscribed,
                  users: (await window.renewed.presence("inbox")).map((client) => client.user),
                  refreshed: [window.refreshed.state, window.refreshedStates],
                })""",
            )
    assert seen["got"] == ["before", "after"]
    assert seen["tokensGiven"] == 2
    assert seen["states"] == [
        ["connecting", None],
        ["connected", None],
        ["disconnected", 4001],
        ["connecting", None],
        ["connected", None],
    ]
    assert seen["resubscribed"] == [True]
    assert seen["users"] == ["alice"]
    # The refreshed connection outlived its first token.
    assert seen["refreshed"] == ["connected", ["connecting", "connected"]]


SCRIPTED: Final = """
(url) => {
  const { Clarion } = window.clarion;
  const seen = (window.seen = {
    got: [], gaps: [], restarts: [], resubscribed: [], ended: [], errors: [], states: [],
    afterEnd: [], outcomes: {}, gotE: [],
  });
  const client = new Clarion(url, { minReconnectDelayMs: 50, maxReconnectDelayMs: 100 });
  client.on("state", ({ state, error }) => seen.states.push([state, error?.code ?? null]));
  client.on("error", ({ error }) => seen.errors.push([error.code, error.message]));
  client.subscribe("c", (data, message) => seen.got.push([message.offset, data]), {
    onGap: (gap) => seen.gaps.push(gap),
    onRestart: (restart) => seen.restarts.push(restart),
    onResubscribed: (info) => seen.resubscribed.push(info),
  });
  window.d = client.subscribe("d", (data) => seen.afterEnd.push(data), {
    onUnsubscribed: (error) => seen.ended.push([error.code, error.codeName, error.message]),
  });
  window.client = client;
  // Settles a request's promise into seen.outcomes[name].
  window.track = (name, promise) => promise.then(
    (value) => { seen.outcomes[name] = value; },
    (error) => { seen.outcomes[name] = [error.name, error.code, error.codeName]; },
  );
}
"""


@asynccontextmanager
async def client_against_a_script(
    profile: Path, script: str
) -> AsyncIterator[tuple[ScriptedServer, Browser, Page]]:
    """A page that imported client.js and ran *script* (given the scripted server's URL)."""
    files = {
        "/": (HTML, client_page("/client.js").encode()),
        "/client.js": (JAVASCRIPT, client_js()),
    }
    async with (
        scripted_server() as server,
        serve_files(files) as url,
        open_browser(profile) as browser,
    ):
        page = await open_client_page(browser, url)
        await browser.call(page.evaluate, script, server.url)
        yield server, browser, page


def message(channel: str, offset: int, data: Any) -> dict[str, Any]:
    return {"type": "message", "channel": channel, "offset": offset, "data": data}


async def test_the_client_handles_each_server_frame_as_the_protocol_says(
    anyio_backend: Backend, profile: Path
) -> None:
    with anyio.fail_after(30):
        async with client_against_a_script(profile, SCRIPTED) as (server, browser, page):
            first = await server.accept()
            assert await first.receive() == {"type": "subscribe", "channel": "c", "id": 1}
            assert await first.receive() == {"type": "subscribe", "channel": "d", "id": 2}
            # Coalesced: a message of an earlier subscription (before the reply), the reply,
            # then a duplicate among the messages.
            reply = {"type": "reply", "id": 1, "channel": "c", "offset": 5, "epoch": "e1"}
            await first.send([message("c", 5, "old"), reply, message("c", 6, "a")])
            await first.send([message("c", 6, "a again"), message("c", 7, "b")])
            await first.send({"type": "ping"})
            assert await first.receive() == {"type": "pong"}
            await first.send([{"type": "gap", "channel": "c", "first": 8, "last": 9}])
            await first.send(message("c", 10, "c"))
            await first.send({"type": "restart", "channel": "c", "epoch": "e2"})
            await first.send(message("c", 1, "d"))
            await first.send({"type": "reply", "id": 2, "channel": "d", "offset": 0, "epoch": "x"})
            ended = {"type": "unsubscribed", "channel": "d", "code": 202, "message": "not now"}
            await first.send([ended, message("d", 1, "after the end")])
            await first.send({"type": "error", "id": 99, "code": 101, "message": "stray"})
            await browser.call(page.evaluate, "() => { track('refused', client.publish('c', 1)); }")
            request = {"type": "publish", "channel": "c", "data": 1, "id": 3}
            assert await first.receive() == request
            await first.send({"type": "error", "id": 3, "code": 301, "message": "Redis is away"})
            # A request in flight when the connection drops fails with DISCONNECTED.
            await browser.call(page.evaluate, "() => { track('lost', client.publish('c', 2)); }")
            assert (await first.receive())["id"] == 4
            # So does a subscribe: it is sent again on the next connection.
            subscribe_e = "() => { client.subscribe('e', (data) => seen.gotE.push(data)); }"
            await browser.call(page.evaluate, subscribe_e)
            assert await first.receive() == {"type": "subscribe", "channel": "e", "id": 5}
            await first.close(1001, "going away")
            # A request made while disconnected waits, and goes after the resubscribe.
            await wait_for(browser, page, "() => client.state !== 'connected'")
            await browser.call(page.evaluate, "() => { track('queued', client.publish('c', 3)); }")
            second = await server.accept()
            since = {"offset": 1, "epoch": "e2"}
            resubscribe = {"type": "subscribe", "channel": "c", "since": since, "id": 6}
            assert await second.receive() == resubscribe  # d ended: not resubscribed
            assert await second.receive() == {"type": "subscribe", "channel": "e", "id": 7}
            assert await second.receive() == {"type": "publish", "channel": "c", "data": 3, "id": 8}
            reply = {"type": "reply", "id": 6, "channel": "c", "offset": 3, "epoch": "e2"}
            replayed = [
                message("c", offset, data) for offset, data in [(1, "d"), (2, "e"), (3, "f")]
            ]
            await second.send([{**reply, "recovered": True}, *replayed])
            await second.send(
                {"type": "reply", "id": 7, "channel": "e", "offset": 0, "epoch": "e3"}
            )
            await second.send(message("e", 1, "e1"))
            await second.send(
                {"type": "reply", "id": 8, "channel": "c", "offset": 4, "epoch": "e2"}
            )
            await wait_for(browser, page, "() => 'queued' in seen.outcomes")
            # A close code the client does not know ends it for good.
            await second.close(4999, "go away")
            await wait_for(browser, page, "() => client.state === 'closed'")
            seen = await browser.call(page.evaluate, "() => ({ ...seen, dActive: d.active })")
    assert seen["got"] == [[6, "a"], [7, "b"], [10, "c"], [1, "d"], [2, "e"], [3, "f"]]
    assert seen["gotE"] == ["e1"]
    assert seen["gaps"] == [{"first": 8, "last": 9}]
    assert seen["restarts"] == [{"epoch": "e2"}]
    assert seen["resubscribed"] == [{"recovered": True, "offset": 3, "epoch": "e2"}]
    assert seen["ended"] == [[202, "PERMISSION_DENIED", "not now"]]
    assert (seen["afterEnd"], seen["dActive"]) == ([], False)
    assert seen["errors"] == [[101, "stray"]]
    assert seen["outcomes"] == {
        "refused": ["ClarionError", 301, "BROKER_UNAVAILABLE"],
        "lost": ["ClarionError", 901, "DISCONNECTED"],
        "queued": {"channel": "c", "offset": 4, "epoch": "e2", "duplicate": False},
    }
    assert seen["states"] == [
        ["connecting", None],
        ["connected", None],
        ["disconnected", 901],
        ["connecting", None],
        ["connected", None],
        ["closed", 904],
    ]


WATCHED: Final = """
(url) => {
  const { Clarion } = window.clarion;
  window.states = [];
  window.client = new Clarion(url, {
    pingIntervalMs: 300, requestTimeoutMs: 300, minReconnectDelayMs: 50, maxReconnectDelayMs: 100,
  });
  client.on("state", ({ state, closeCode }) => window.states.push([state, closeCode ?? null]));
}
"""


async def test_a_quiet_connection_is_pinged_and_replaced_when_the_ping_gets_no_reply(
    anyio_backend: Backend, profile: Path
) -> None:
    # A browser may take minutes to notice a dead TCP connection: the client checks.
    with anyio.fail_after(30):
        async with client_against_a_script(profile, WATCHED) as (server, browser, page):
            first = await server.accept()
            assert await first.receive() == {"type": "ping", "id": 1}
            await first.send({"type": "reply", "id": 1})
            assert await first.receive() == {"type": "ping", "id": 2}  # left unanswered
            second = await server.accept()
            await wait_for(browser, page, "() => client.state === 'connected'")
            states = await browser.call(page.evaluate, "() => window.states")
            first.finished.set()
            second.finished.set()
    assert states == [
        ["connecting", None],
        ["connected", None],
        ["disconnected", 4002],
        ["connecting", None],
        ["connected", None],
    ]
