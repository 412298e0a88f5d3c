"""The client snippets of the docs' Clients page, run as written, so that the docs
cannot drift from the code.

The blocks are read from docs/clients.md by heading: the first ``html`` block under
"From a browser", the first ``python`` block under "From Python" and the first ``sh``
block under "From the shell". The only change made to them is the server's address:
``127.0.0.1:8000`` becomes the test server's free port (and the shell commands get
``--url``, which the page says they take, and the subscribe line stops after one
message: ``--count 1`` for its ``--count 10``).

- The browser snippet is a page of another origin in a headless Chromium; what it logs
  on the console is checked.
- The Python snippet runs as a script with this virtualenv's Python, once as written
  (``anyio.run(main)``, asyncio) and once as its comment says (``backend="trio"``); its
  stdout must be what the page says it prints.
- The shell lines run ``clarion subscribe`` and ``clarion publish`` as processes; their
  JSON lines are checked, and the publish line against its ``# prints`` comment.

The README's "Try it" is run by tests/integration/test_readme.py.
"""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from service.settings import Settings
from tests.browser.driver import open_browser
from tests.browser.pages import serve_page
from tests.support.commands import CLARION, wait_subscribed
from tests.support.docs import DOCS, code_block, on_port, section, shell_line
from tests.support.server import http_call, running_server

if TYPE_CHECKING:
    from pathlib import Path

    from playwright.sync_api import ConsoleMessage, Page

    from service.runner import Backend

CLIENTS: Final = DOCS / "clients.md"
BROWSER: Final = "## From a browser"
PYTHON: Final = "## From Python"
SHELL: Final = "## From the shell"
#: The Python snippet's last line; its comment offers the trio variant (group 1).
RUN_LINE: Final = re.compile(
    r'^anyio\.run\(main\) +# or (anyio\.run\(main, backend="trio"\))$', re.M
)
#: What the Python snippet prints (the epoch differs from run to run).
PRINTED: Final = re.compile(
    r"Message\(channel='chat:lobby', offset=1, epoch='[0-9a-f]+', data=\{'text': 'hello'\}\)"
)


# The browser snippet ------------------------------------------------------------------


def load_and_collect_logs(page: Page, url: str, wanted: list[list[Any]]) -> list[list[Any]]:
    """In the browser thread: open *url* in *page* and wait until its ``console.log``
    calls include every argument list in *wanted*; return the argument lists of all its
    ``console.log`` calls.

    Raises:
        playwright.sync_api.TimeoutError: if they do not come within `PAGE_TIMEOUT_MS`.
    """
    logged: list[ConsoleMessage] = []

    def collect(message: ConsoleMessage) -> None:
        logged.append(message)

    page.on("console", collect)  # Playwright wraps plain functions, not bound builtins
    page.goto(url)
    while True:
        # Events are only dispatched inside Playwright calls, so none is missed between
        # this check and the wait (a list comprehension also sees what is appended).
        # Only console.log: Chromium also reports the page server's 404 for /favicon.ico.
        seen = [[arg.json_value() for arg in each.args] for each in logged if each.type == "log"]
        if all(arguments in seen for arguments in wanted):
            return seen
        page.wait_for_event("console")


async def test_the_browser_snippet_works_as_written(
    anyio_backend: Backend, free_tcp_port: int, profile: Path
) -> None:
    snippet = on_port(code_block(CLIENTS, BROWSER, "html"), free_tcp_port)
    wanted: list[list[Any]] = [["received", {"text": "hello"}], ["published at offset", 1]]
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with anyio.fail_after(30):
        async with (
            running_server(Settings(), anyio_backend, free_tcp_port),
            serve_page(snippet) as url,  # another origin: a port of its own
            open_browser(profile) as browser,
        ):
            assert not url.startswith(f"http://127.0.0.1:{free_tcp_port}/")
            page = await browser.new_page()
            try:
                logged = await browser.call(load_and_collect_logs, page, url, wanted)
            except PlaywrightTimeout as exc:
                console = "\n".join(browser.console)
                raise AssertionError(
                    f"the docs' browser snippet did not log {wanted}; the page logged:\n"
                    f"{console}\nThe page was:\n{snippet}"
                ) from exc
    assert sorted(logged, key=repr) == sorted(wanted, key=repr), browser.console
    assert not [line for line in browser.console if line.startswith("uncaught")], browser.console


# The Python snippet -------------------------------------------------------------------


def test_the_docs_say_what_the_python_snippet_prints() -> None:
    text = " ".join(section(CLIENTS, PYTHON).split())
    found = re.search(r"It prints `([^`]+)`", text)
    assert found is not None, "docs/clients.md no longer says what the Python snippet prints"
    assert PRINTED.fullmatch(found[1]), found[1]


@pytest.mark.parametrize("runner", ["as written", "on trio, as its comment says"])
async def test_the_python_snippet_works_as_written(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path, runner: str
) -> None:
    snippet = on_port(code_block(CLIENTS, PYTHON, "python"), free_tcp_port)
    run_line = RUN_LINE.search(snippet)
    assert run_line is not None, f"no line matching {RUN_LINE.pattern!r} in:\n{snippet}"
    if runner != "as written":
        snippet = snippet.replace(run_line[0], run_line[1])
    script = tmp_path / "snippet.py"
    script.write_text(snippet, encoding="utf-8")
    with anyio.fail_after(30):
        async with running_server(Settings(), anyio_backend, free_tcp_port):
            done = await anyio.run_process([sys.executable, str(script)], cwd=tmp_path, check=False)
    stdout, stderr = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"the snippet failed:\n{stderr}\n{snippet}"
    assert PRINTED.fullmatch(stdout.rstrip("\n")), (stdout, stderr)


# The shell lines ----------------------------------------------------------------------


async def test_the_shell_lines_work_as_written(anyio_backend: Backend, free_tcp_port: int) -> None:
    block = code_block(CLIENTS, SHELL, "sh")
    subscribe, _ = shell_line(block, "clarion subscribe ")
    publish, prints = shell_line(block, "clarion publish ")
    assert publish == ["clarion", "publish", "chat:lobby", '{"text": "hello"}'], publish
    # Subscribe as the page does, but stop after the one message published here.
    assert subscribe[:3] == ["clarion", "subscribe", "chat:lobby"], subscribe
    count = subscribe.index("--count") + 1
    subscribe[count] = "1"
    channels = set(subscribe[2 : count - 1])
    # The comment says what publish prints, with "…" for the epoch.
    assert prints.startswith("prints "), prints
    printed = re.compile(re.escape(prints.removeprefix("prints ")).replace("…", "[0-9a-f]+"))
    url = ["--url", f"ws://127.0.0.1:{free_tcp_port}/ws"]
    with anyio.fail_after(30):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            async with await anyio.open_process([CLARION, *subscribe[1:], *url]) as subscriber:
                assert subscriber.stdout is not None
                assert subscriber.stderr is not None
                await wait_subscribed(BufferedByteReceiveStream(subscriber.stderr), channels)
                status, stats = await http_call(server, "GET", "/api/stats")
                assert (status, stats["subscriptions"]) == (200, len(channels)), stats
                published = await anyio.run_process([CLARION, *publish[1:], *url], check=False)
                received = b""
                async for chunk in subscriber.stdout:
                    received += chunk
                assert await subscriber.wait() == 0, received
    assert published.returncode == 0, published.stderr.decode()
    reply = published.stdout.decode().rstrip("\n")
    assert printed.fullmatch(reply), (reply, prints)
    position = msgspec.json.decode(reply)
    assert position == {"offset": 1, "epoch": position["epoch"]}
    lines = received.decode().splitlines()
    assert [msgspec.json.decode(line) for line in lines] == [
        {
            "channel": "chat:lobby",
            "offset": 1,
            "epoch": position["epoch"],
            "data": {"text": "hello"},
        }
    ]
