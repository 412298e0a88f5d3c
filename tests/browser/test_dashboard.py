"""The dashboard at ``GET /`` in a real Chromium, against a real Clarion."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import anyio
import msgspec

from channels.config import ChannelRule
from service.settings import ServerSettings, Settings
from tests.browser.driver import PAGE_TIMEOUT_MS, open_browser
from tests.support.server import http_publish, running_server
from tests.support.wsclient import connect, subscribe

if TYPE_CHECKING:
    from pathlib import Path

    from playwright.sync_api import Page

    from service.runner import Backend
    from tests.support.server import Server

#: Poll /api/stats often, so that the tests wait less.
POLL: Final = "?interval=0.25"
#: A rate the dashboard shows for a channel or a counter that moves: "3.2/s", "40/s".
NONZERO_RATE: Final = re.compile(r"^(?!0\.0/s)\d+(\.\d)?/s$")


def expect_text(page: Page, selector: str, text: str | re.Pattern[str]) -> None:
    """Wait until the element at *selector* shows *text* (the whole text, or a match)."""
    from playwright.sync_api import expect

    expect(page.locator(selector)).to_have_text(text, timeout=PAGE_TIMEOUT_MS)


def expect_visible(page: Page, selector: str, visible: bool = True) -> None:
    from playwright.sync_api import expect

    locator = expect(page.locator(selector))
    if visible:
        locator.to_be_visible(timeout=PAGE_TIMEOUT_MS)
    else:
        locator.to_be_hidden(timeout=PAGE_TIMEOUT_MS)


def submit(page: Page, field: str, value: str, button: str) -> None:
    """Fill the input at *field* with *value* and click *button*."""
    page.fill(field, value)
    page.click(button)


async def publish_steadily(server: Server, channel: str, stop: anyio.Event) -> None:
    """Publish on *channel* about 20 times a second until *stop* is set."""
    index = 0
    while not stop.is_set():
        await http_publish(server, channel, index)
        index += 1
        await anyio.sleep(0.05)  # pacing a steady rate, not waiting for anything


async def test_the_dashboard_shows_connections_subscriptions_and_channel_rates(
    anyio_backend: Backend, free_tcp_port: int, profile: Path
) -> None:
    with anyio.fail_after(30):
        async with (
            running_server(Settings(), anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as listener,
            open_browser(profile) as browser,
        ):
            await subscribe(listener, "news")
            for index in range(3):
                await http_publish(server, "news", index)
            page = await browser.new_page()
            await browser.call(page.goto, f"http://127.0.0.1:{free_tcp_port}/{POLL}")
            await browser.call(expect_text, page, "#status", "ready")
            await browser.call(expect_text, page, "#broker", "memory")
            await browser.call(expect_text, page, "#connections", "1")
            await browser.call(expect_text, page, "#subscriptions", "1")
            await browser.call(expect_text, page, "#published", "3")
            news = 'tr[data-channel="news"]'
            await browser.call(expect_text, page, f"{news} td.subscribers", "1")
            await browser.call(expect_text, page, f"{news} td.messages", "3")
            # Rates come from two successive polls of the counters.
            async with anyio.create_task_group() as tg:
                stop = anyio.Event()
                tg.start_soon(publish_steadily, server, "news", stop)
                await browser.call(expect_text, page, f"{news} td.rate", NONZERO_RATE)
                await browser.call(expect_text, page, "#published-rate", NONZERO_RATE)
                stop.set()
            # A second connection shows up too.
            async with connect(server.ws_url):
                await browser.call(expect_text, page, "#connections", "2")
            # A click on a channel tails it.
            await browser.call(page.click, f"{news} button")
            tailing = re.compile(r"^subscribed to news at offset \d+$")
            await browser.call(expect_text, page, "#tail-state", tailing)
    assert not [line for line in browser.console if line.startswith("uncaught")], browser.console


async def test_the_dashboard_tails_a_channel_and_publishes_to_it(
    anyio_backend: Backend, free_tcp_port: int, profile: Path, artifacts: Path
) -> None:
    with anyio.fail_after(30):
        async with (
            running_server(Settings(), anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as listener,
            open_browser(profile) as browser,
        ):
            await subscribe(listener, "news")
            page = await browser.new_page()
            await browser.call(page.goto, f"http://127.0.0.1:{free_tcp_port}/{POLL}")
            await browser.call(submit, page, "#tail-channel", "news", "#tail-button")
            await browser.call(expect_text, page, "#tail-state", "subscribed to news at offset 0")
            await http_publish(server, "news", {"text": "hello from the API"})
            first = "#tail-list li:first-child"
            await browser.call(expect_text, page, f"{first} .data", '{"text":"hello from the API"}')
            await browser.call(
                submit,
                page,
                "#publish-data",
                '{"text": "hello from the page"}',
                "#publish-form button",
            )
            await browser.call(expect_text, page, "#publish-result", "published at offset 2")
            await browser.call(
                expect_text, page, f"{first} .data", '{"text":"hello from the page"}'
            )
            await browser.call(expect_text, page, f"{first} .offset", "#2")
            # Not JSON: published as a string.
            await browser.call(submit, page, "#publish-data", "plain words", "#publish-form button")
            await browser.call(expect_text, page, f"{first} .data", '"plain words"')
            # The tail and the listener see the same messages; the tail is newest first.
            offsets = await browser.call(
                page.eval_on_selector_all,
                "#tail-list li",
                "items => items.map(i => i.dataset.offset)",
            )
            assert offsets == ["3", "2", "1"]
            received = [await listener.receive_object() for _ in range(3)]
            assert [message["data"] for message in received] == [
                {"text": "hello from the API"},
                {"text": "hello from the page"},
                "plain words",
            ]
            # The dashboard's own subscription counts: two subscribers to news.
            await browser.call(expect_text, page, 'tr[data-channel="news"] td.subscribers', "2")
            await browser.call(expect_text, page, 'tr[data-channel="news"] td.messages', "3")
            await browser.call(page.screenshot, path=artifacts / "dashboard.png", full_page=True)
    assert not [line for line in browser.console if line.startswith("uncaught")], browser.console


async def test_the_dashboard_asks_for_the_api_key_and_keeps_it_for_the_session(
    anyio_backend: Backend, free_tcp_port: int, profile: Path
) -> None:
    config = Settings(
        server=ServerSettings(api_keys=["the-right-key"]),
        # Only the HTTP API, with a key, may publish on alerts.
        channels=[ChannelRule(match="alerts", publish=False), ChannelRule(match="*")],
    )
    with anyio.fail_after(30):
        async with (
            running_server(config, anyio_backend, free_tcp_port),
            open_browser(profile) as browser,
        ):
            page = await browser.new_page()
            await browser.call(page.goto, f"http://127.0.0.1:{free_tcp_port}/{POLL}")
            await browser.call(expect_visible, page, "#key-panel")
            await browser.call(expect_text, page, "#status", "API key needed")
            await browser.call(submit, page, "#key", "a-wrong-key", "#key-form button")
            await browser.call(
                expect_text, page, "#key-message", re.compile(r"^That key was refused")
            )
            await browser.call(submit, page, "#key", "the-right-key", "#key-form button")
            await browser.call(expect_visible, page, "#key-panel", False)
            await browser.call(expect_text, page, "#status", "ready")
            await browser.call(expect_text, page, "#connections", "0")
            stored = await browser.call(
                page.evaluate, "() => sessionStorage.getItem('clarion.apiKey')"
            )
            assert stored == "the-right-key"
            # A reload keeps the key: no question this time.
            await browser.call(page.reload)
            await browser.call(expect_text, page, "#status", "ready")
            await browser.call(expect_visible, page, "#key-panel", False)
            # The publish box sends the key: it may publish where clients may not.
            await browser.call(submit, page, "#tail-channel", "alerts", "#tail-button")
            await browser.call(expect_text, page, "#tail-state", "subscribed to alerts at offset 0")
            await browser.call(
                submit,
                page,
                "#publish-data",
                msgspec.json.encode({"level": 3}).decode(),
                "#publish-form button",
            )
            await browser.call(expect_text, page, "#publish-result", "published at offset 1")
            await browser.call(expect_text, page, "#tail-list li:first-child .data", '{"level":3}')
            await browser.call(expect_text, page, "#connections", "1")
    assert not [line for line in browser.console if line.startswith("uncaught")], browser.console
