"""Drive a headless Chromium from async tests, on asyncio and on trio.

Playwright's async API runs on asyncio only, and its sync API must stay in the thread
that started it. So `open_browser` starts one worker thread (``anyio.to_thread``, owned
by the block's task group) that launches Chromium with the sync API and then runs the
functions that `Browser.call` hands it, one at a time. A test awaits each call without
blocking its event loop, which meanwhile serves the pages, WebSockets and API calls the
browser makes.

The browser is Debian's Chromium (``/usr/bin/chromium``, or ``CLARION_CHROMIUM``), in a
fresh profile, with nothing downloaded: never ``playwright install``.
"""

from __future__ import annotations

import os
import queue
import shutil
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Generic, ParamSpec, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from playwright.sync_api import BrowserContext, Page

__all__ = (
    "CHROMIUM_ARGS",
    "INSTALL_HINT",
    "PAGE_TIMEOUT_MS",
    "Browser",
    "find_chromium",
    "missing_requirement",
    "open_browser",
)

P = ParamSpec("P")
T = TypeVar("T")

INSTALL_HINT: Final = (
    "the browser tests need Chromium and Playwright for Python: apt-get install chromium "
    "(or set CLARION_CHROMIUM to a Chromium binary) and .venv/bin/pip install "
    "'playwright>=1.45' (the test extra has it). Do not run `playwright install`: the "
    "tests use the system's Chromium and download nothing."
)
#: Chromium's flags: headless, no sandbox (root in CI), and no traffic of its own.
CHROMIUM_ARGS: Final = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A container's /dev/shm is often 64 MB, too small for Chromium's shared memory.
    "--disable-dev-shm-usage",
)
#: The longest any one Playwright call may wait (an event in a page, a navigation).
PAGE_TIMEOUT_MS: Final = 10_000
#: How long Chromium may take to start.
LAUNCH_TIMEOUT_MS: Final = 30_000


def find_chromium() -> str | None:
    """The Chromium binary: ``CLARION_CHROMIUM``, else ``chromium`` on the PATH."""
    configured = os.environ.get("CLARION_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_requirement() -> str | None:
    """What the browser tests lack (Chromium or Playwright), or None."""
    if find_chromium() is None:
        return f"no Chromium binary was found: {INSTALL_HINT}"
    try:
        import playwright.sync_api  # noqa: F401 - only checking that it is installed
    except ImportError:
        return f"Playwright for Python is not installed: {INSTALL_HINT}"
    return None


class _Call(Generic[T]):
    """A function for the browser thread, and its outcome for the task that waits."""

    def __init__(self, function: Callable[[], T]) -> None:
        self._function = function
        self.done = anyio.Event()
        self._value: T
        self._error: Exception | None = None

    def run(self) -> None:
        """Run the function (in the browser thread), then wake the waiting task."""
        try:
            self._value = self._function()
        except Exception as exc:
            self._error = exc
        anyio.from_thread.run_sync(self.done.set)

    def outcome(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value


class Browser:
    """A Chromium that `open_browser` runs in its own thread; see the module docstring."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._context: BrowserContext | None = None
        self.console: list[str] = []
        """What the pages logged, and their uncaught errors: for failure messages."""

    async def call(self, function: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``function(*args, **kwargs)`` in the browser thread; return its result.

        Use it for every Playwright call: ``await browser.call(page.goto, url)``. Waits
        for the calls before this one, then for this one (at most `PAGE_TIMEOUT_MS` for
        any Playwright wait). Cancelling the wait does not stop the call.
        """
        call = _Call(partial(function, *args, **kwargs))
        self._calls.put(call)
        await call.done.wait()
        return call.outcome()

    async def new_page(self) -> Page:
        """Open a tab; its console lines and uncaught errors go to `console`."""
        return await self.call(self._new_page)

    def _new_page(self) -> Page:
        if self._context is None:
            raise RuntimeError("the browser is not running")
        page = self._context.new_page()
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.console.append(f"uncaught: {error}"))
        return page

    def _run(self, executable: str, profile: Path) -> None:
        """The browser thread: launch Chromium, run calls until None comes, close it."""
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=executable,
                headless=True,
                args=list(CHROMIUM_ARGS),
                timeout=LAUNCH_TIMEOUT_MS,
                viewport={"width": 1280, "height": 900},
            )
            context.set_default_timeout(PAGE_TIMEOUT_MS)
            self._context = context
            try:
                while (call := self._calls.get()) is not None:
                    call.run()
            finally:
                self._context = None
                context.close()


@asynccontextmanager
async def open_browser(profile: Path) -> AsyncIterator[Browser]:
    """Run a headless Chromium with a fresh user data directory at *profile* for the
    duration of the block.

    Raises:
        AssertionError: if Chromium or Playwright is missing (with how to install them).
    """
    missing = missing_requirement()
    executable = find_chromium()
    if missing is not None or executable is None:
        raise AssertionError(missing or INSTALL_HINT)
    browser = Browser()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(anyio.to_thread.run_sync, browser._run, executable, profile))
        try:
            yield browser
        finally:
            browser._calls.put(None)  # the thread finishes its call, then closes Chromium
