"""The README's "Try it", run as written: what a reader types right after the first
command, and what the README says each command prints.

Getting started (docs/getting-started.md) shows the same steps; both pages are run. Under
the heading come, in order: the subscriber's ``console`` block (its command, then the
stderr line it writes once subscribed), the publisher's ``console`` block (``clarion
publish`` and ``curl``, each followed by what it prints) and a ``text`` block (what the
subscriber prints). What the test changes:

- the server is the default configuration served in-process on a free port, so the
  ``clarion`` commands get ``--url`` (which Clients says they take) and the curl URL is
  pointed at it; the curl request itself (its method, path and body as written) is made
  by the test, so that curl need not be installed;
- the epoch differs from run to run: the output is compared with the page's example
  epoch put in place of the real one;
- the subscriber is stopped with SIGINT, as Ctrl-C would, and must exit with status 0.
"""

from __future__ import annotations

import re
import shlex
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from service.settings import Settings
from tests.support.commands import CLARION, read_line, wait_subscribed
from tests.support.docs import DOCS, README, code_blocks, on_port
from tests.support.server import http_exchange, running_server

if TYPE_CHECKING:
    from pathlib import Path

    from service.runner import Backend
    from tests.support.server import Server

PAGES: Final = [(README, "### Try it"), (DOCS / "getting-started.md", "## Try it")]
#: The epoch the pages show in their example output.
EXAMPLE_EPOCH: Final = "3f1c0a9be2d4"
#: The subscriber's stderr line, whose position gives the run's epoch (group 1).
SUBSCRIBED_AT: Final = re.compile(r"clarion: subscribed to chat:lobby at 0:([0-9a-f]+)")


@dataclass
class Command:
    """A ``$ `` line of a console block, and the lines shown after it."""

    argv: list[str]
    prints: list[str] = field(default_factory=list)


def commands(block: str) -> list[Command]:
    """The commands of a ``console`` block, each with what the block shows it prints."""
    found: list[Command] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            found.append(Command(shlex.split(line.removeprefix("$ "))))
        else:
            assert found, f"output before any command in:\n{block}"
            found[-1].prints.append(line)
    return found


def steps(page: Path, heading: str) -> tuple[Command, list[Command], list[str]]:
    """The subscriber's command, the publisher's commands, and what the subscriber
    prints, as *page* shows them under *heading*."""
    blocks = code_blocks(page, heading)
    assert [language for language, _ in blocks] == ["console", "console", "text"], blocks
    (subscriber,) = commands(blocks[0][1])
    return subscriber, commands(blocks[1][1]), blocks[2][1].splitlines()


async def publish(command: Command, server: Server, url: list[str]) -> list[str]:
    """Run one of the publisher's commands against *server*; return the lines it prints.

    Raises:
        AssertionError: if it fails, or is not one the README's readers are shown.
    """
    match command.argv:
        case [".venv/bin/clarion", "publish", *arguments]:
            done = await anyio.run_process([CLARION, "publish", *arguments, *url], check=False)
            assert done.returncode == 0, done.stderr.decode()
            return done.stdout.decode().splitlines()
        case ["curl", "-s", "-X", method, address, "-d", body]:
            host, _, path = on_port(address, server.port).partition("/")
            assert host == f"127.0.0.1:{server.port}", address
            status, reply = await http_exchange(server, method, f"/{path}", body.encode())
            assert status == 200, reply
            return reply.decode().splitlines()
    raise AssertionError(f"not a command this test runs: {command.argv}")


@pytest.mark.parametrize(("page", "heading"), PAGES, ids=["README", "getting-started"])
async def test_try_it_works_as_written(
    anyio_backend: Backend, free_tcp_port: int, page: Path, heading: str
) -> None:
    subscriber, publishers, received = steps(page, heading)
    assert subscriber.argv == [".venv/bin/clarion", "subscribe", "chat:lobby"]
    url = ["--url", f"ws://127.0.0.1:{free_tcp_port}/ws"]
    printed: list[list[str]] = []
    with anyio.fail_after(30):
        async with (
            running_server(Settings(), anyio_backend, free_tcp_port) as server,
            await anyio.open_process([CLARION, *subscriber.argv[1:], *url]) as process,
        ):
            assert process.stdout is not None
            assert process.stderr is not None
            stdout = BufferedByteReceiveStream(process.stdout)
            stderr = await wait_subscribed(
                BufferedByteReceiveStream(process.stderr), {"chat:lobby"}
            )
            for command in publishers:
                printed.append(await publish(command, server, url))
            lines = [await read_line(stdout, "stdout") for _ in received]
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
    found = SUBSCRIBED_AT.fullmatch(stderr[-1])
    assert found is not None, stderr
    epoch = found[1]

    def as_shown(lines: list[str]) -> list[str]:
        return [line.replace(epoch, EXAMPLE_EPOCH) for line in lines]

    assert as_shown(stderr) == subscriber.prints
    assert [as_shown(lines) for lines in printed] == [command.prints for command in publishers]
    assert as_shown(lines) == received
