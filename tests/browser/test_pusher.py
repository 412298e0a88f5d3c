"""Laravel Echo over pusher-js, the real npm packages, in a real Chromium, against the
Pusher door of a real Clarion; the app's backend is the ``pusher`` library, and the other
members of its channels pusher-js in Node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pusher

from service.settings import AppSettings, Settings
from tests.browser.driver import open_browser
from tests.browser.pages import HTML, JAVASCRIPT
from tests.browser.test_client import wait_for
from tests.support.pusherjs import NODE_FOLDER, auth_app, open_pusherjs, serving
from tests.support.redis import free_port
from tests.support.server import running_server

if TYPE_CHECKING:
    from pathlib import Path

    from channels.config import BrokerConfig
    from service.runner import Backend

SECRET = "0123456789abcdef0123"

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Laravel Echo on Clarion</title></head>
<body>
<script src="/pusher.js"></script>
<script src="/echo.js"></script>
<script>
  window.received = [];
  const EchoClass = Echo.default || Echo.Echo || Echo;
  window.echo = new EchoClass({
    broadcaster: "pusher",
    Pusher: window.Pusher,
    key: "app-key",
    cluster: "clarion",
    wsHost: "127.0.0.1",
    wsPort: Number(new URLSearchParams(location.search).get("port")),
    forceTLS: false,
    enabledTransports: ["ws"],
    disableStats: true,
    authEndpoint: "/auth",
  });
</script>
</body>
</html>
"""

LISTEN = """
() => {
  const push = (what) => (event) => window.received.push([what, event]);
  window.echo.channel("orders").listen(".shipped", push("shipped"));
  window.echo.private("chat").listenForWhisper("typing", push("typing"));
  window.echo.join("room")
    .here((users) => window.received.push(["here", users.map((u) => u.id).sort()]))
    .joining((user) => window.received.push(["joining", user.id]))
    .leaving((user) => window.received.push(["leaving", user.id]));
}
"""


def files() -> dict[str, tuple[str, bytes]]:
    modules = NODE_FOLDER / "node_modules"
    return {
        "/": (HTML, PAGE.encode()),
        "/pusher.js": (JAVASCRIPT, (modules / "pusher-js/dist/web/pusher.min.js").read_bytes()),
        "/echo.js": (JAVASCRIPT, (modules / "laravel-echo/dist/echo.iife.js").read_bytes()),
    }


def seen(kind: str) -> str:
    return f"() => window.received.some(([what]) => what === {kind!r})"


async def test_laravel_echo_in_chromium_listens_joins_and_whispers(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig, profile: Path
) -> None:
    app = AppSettings(id="1", key="app-key", secret=SECRET, client_events=True)
    config = Settings(broker=broker_config, apps=[app])
    users: dict[str, dict[str, Any]] = {}
    with anyio.fail_after(60):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            open_pusherjs() as driver,
        ):
            client = pusher.Pusher(
                app_id="1",
                key="app-key",
                secret=SECRET,
                host="127.0.0.1",
                port=server.port,
                ssl=False,
            )
            # Served from the app's own origin, as a Laravel page is: its auth endpoint too.
            async with (
                serving(auth_app(client, users, files()), anyio_backend, free_port()) as site,
                open_browser(profile) as browser,
            ):
                page = await browser.new_page()
                await browser.call(page.goto, f"{site}/?port={server.port}")
                await wait_for(browser, page, "() => window.echo && window.echo.socketId()")
                socket_id = await browser.call(page.evaluate, "() => window.echo.socketId()")
                # Laravel's user_info carries the user's id: Echo hands members' infos.
                users[socket_id] = {"id": "browser", "user_info": {"id": "browser"}}
                await browser.call(page.evaluate, LISTEN)
                await wait_for(browser, page, seen("here"))
                # A member in Node joins and whispers; the backend triggers an event.
                node = await driver_connect(driver, server.port, f"{site}/auth")
                users[node] = {"id": "node", "user_info": {"id": "node"}}
                await driver.send(op="subscribe", **{"as": "n"}, channel="presence-room")
                await driver.event("n", "presence-room", "pusher:subscription_succeeded")
                await wait_for(browser, page, seen("joining"))
                await driver.send(op="subscribe", **{"as": "n"}, channel="private-chat")
                await driver.event("n", "private-chat", "pusher:subscription_succeeded")
                await driver.send(
                    op="trigger",
                    **{"as": "n"},
                    channel="private-chat",
                    event="client-typing",
                    data={"who": "node"},
                )
                await wait_for(browser, page, seen("typing"))
                await anyio.to_thread.run_sync(
                    lambda: client.trigger("orders", "shipped", {"order": 7})
                )
                await wait_for(browser, page, seen("shipped"))
                # The browser whispers back; the Node member hears it.
                await browser.call(
                    page.evaluate, '() => window.echo.private("chat").whisper("seen", {n: 1})'
                )
                heard = await driver.event("n", "private-chat", "client-seen")
                assert heard["data"] == {"n": 1}
                await driver.send(op="disconnect", **{"as": "n"})
                await wait_for(browser, page, seen("leaving"))
                received = await browser.call(page.evaluate, "() => window.received")
    assert received == [
        ["here", ["browser"]],
        ["joining", "node"],
        ["typing", {"who": "node"}],
        ["shipped", {"order": 7}],
        ["leaving", "node"],
    ]


async def driver_connect(driver: Any, port: int, auth: str) -> str:
    await driver.send(op="connect", **{"as": "n"}, key="app-key", port=port, auth=auth)
    return str(await driver.connected("n"))
