"""The client side of the ``clarion`` command: ``clarion publish`` and ``clarion
subscribe`` over WebSocket, and the server API's commands over HTTP (``clarion
publish --channels``, ``disconnect``, ``unsubscribe``, ``history``, ``presence``,
``channels``), which print the API's answer as JSON.

``publish`` and ``subscribe`` speak the WebSocket protocol through `service.client`.
``subscribe`` writes each message as one JSON line on stdout
(``{"channel":…,"offset":…,"epoch":…,"data":…}``), flushed at once, for shell
pipelines; what is not a message (where a subscription starts, gaps, restarts, joins)
goes to stderr. Exit status: 0 on success, after
``--count`` messages or on SIGINT/SIGTERM; 1 when the server refuses or the connection
fails, with the error's code and message on stderr.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from service.client.connection import open_client
from service.client.errors import ClarionError
from service.client.events import Gap, Join, Leave, Message, NotRecovered, Restart
from service.client.http import ServerAPIClient

if TYPE_CHECKING:
    from anyio import CancelScope

    from channels.publication import Position
    from service.client.subscription import Subscription

__all__ = (
    "DEFAULT_URL",
    "parse_since",
    "publish_command",
    "run_api",
    "run_publish",
    "run_subscribe",
    "subscribe_command",
)

DEFAULT_URL: Final = "ws://127.0.0.1:8000/ws"
_encoder = msgspec.json.Encoder()


def parse_since(value: str) -> Position:
    """Parse ``OFFSET:EPOCH`` (as ``clarion subscribe`` prints where it starts).

    Raises:
        ValueError: for another form.
    """
    from channels.publication import Position

    offset, colon, epoch = value.partition(":")
    if not (colon and offset.isdigit() and epoch):
        raise ValueError(f"{value!r} is not OFFSET:EPOCH, e.g. 41:3f1c0a9be2d4")
    return Position(int(offset), epoch)


def _say(line: str) -> None:
    """Write a line for people on stderr (stdout carries only the results)."""
    sys.stderr.write(f"clarion: {line}\n")
    sys.stderr.flush()


def _error(exc: ClarionError) -> int:
    _say(f"error: {exc.code} {exc.message}")
    return 1


def run_publish(url: str, token: str | None, channel: str, data: str, timeout: float) -> int:
    """Run `publish_command` within *timeout* seconds; return the exit status."""

    async def publish() -> int:
        try:
            with anyio.fail_after(timeout):
                return await publish_command(url, token, channel, data)
        except TimeoutError:
            _say(f"error: no reply from {url} within {timeout:g} seconds")
            return 1

    return anyio.run(publish)


async def publish_command(url: str, token: str | None, channel: str, data: str) -> int:
    """Publish *data* (JSON text, sent byte for byte) on *channel*; print the reply's
    ``{"offset":…,"epoch":…}`` on stdout; return the exit status: 0, 1 if the server
    refuses or cannot be reached, 2 if *data* is not JSON."""
    try:
        msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        await anyio.lowlevel.checkpoint()
        _say(f"error: DATA is not JSON: {exc}")
        return 2
    try:
        async with open_client(url, token=token, reconnect=False) as client:
            position = await client.publish(channel, msgspec.Raw(data.encode()))
    except ClarionError as exc:
        return _error(exc)
    sys.stdout.write(_encoder.encode(position).decode() + "\n")
    sys.stdout.flush()
    return 0


def run_subscribe(
    url: str,
    token: str | None,
    channels: list[str],
    since: Position | None,
    count: int | None,
) -> int:
    """Run `subscribe_command`; return the exit status."""
    return anyio.run(subscribe_command, url, token, channels, since, count)


class _Output:
    """Writes JSON lines to stdout from a worker thread, so that a slow pipe never
    stalls the event loop (and with it the client's reader); ends *done* after *count*
    lines, or when stdout is closed (``| head -n 1``)."""

    def __init__(self, count: int | None, done: CancelScope) -> None:
        self.left = count
        self.done = done
        self._lock = anyio.Lock()

    async def write(self, message: Message) -> None:
        async with self._lock:
            if self.left is not None and self.left <= 0:
                return
            line = _encoder.encode(message) + b"\n"
            if not await anyio.to_thread.run_sync(_write_stdout, line):
                self.done.cancel("stdout is closed")
            elif self.left is not None:
                self.left -= 1
                if self.left == 0:
                    self.done.cancel("--count reached")


def _write_stdout(line: bytes) -> bool:
    """Write *line* and flush; return False if the reader has gone."""
    try:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # Point stdout at /dev/null so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True


def _note(channel: str, event: Gap | Restart | NotRecovered | Join | Leave) -> str:
    if isinstance(event, Gap):
        return f"{channel}: gap: offsets {event.first} to {event.last} were dropped"
    if isinstance(event, Restart):
        return f"{channel}: restart: the stream began again in epoch {event.epoch}"
    if isinstance(event, NotRecovered):
        since, position = event.since, event.position
        return (
            f"{channel}: not recovered: the messages after {since.offset}:{since.epoch} "
            f"up to {position.offset}:{position.epoch} are lost"
        )
    kind = "join" if isinstance(event, Join) else "leave"
    user = "none" if event.info.user is None else event.info.user
    return f"{channel}: {kind}: client {event.info.client}, user {user}"


async def _pump(subscription: Subscription, output: _Output, failures: list[ClarionError]) -> None:
    """Print *subscription*'s events until it ends; an error ends the whole command."""
    try:
        async for event in subscription:
            if isinstance(event, Message):
                await output.write(event)
            else:
                _say(_note(subscription.channel, event))
    except ClarionError as exc:
        failures.append(exc)
        output.done.cancel("a subscription failed")


async def _stream(
    url: str,
    token: str | None,
    channels: list[str],
    since: Position | None,
    output: _Output,
    failures: list[ClarionError],
) -> None:
    try:
        async with open_client(url, token=token) as client, AsyncExitStack() as stack:
            subscriptions = []
            for channel in channels:
                subscription = await stack.enter_async_context(
                    client.subscribe(channel, since=since)
                )
                subscriptions.append(subscription)
                start = subscription.started
                where = "" if start is None else f" at {start.offset}:{start.epoch}"
                if since is not None:
                    where += f", replaying after {since.offset}:{since.epoch}"
                _say(f"subscribed to {channel}{where}")
            async with anyio.create_task_group() as pumps:
                for subscription in subscriptions:
                    pumps.start_soon(_pump, subscription, output, failures)
    except ClarionError as exc:
        failures.append(exc)


async def subscribe_command(
    url: str,
    token: str | None,
    channels: list[str],
    since: Position | None,
    count: int | None,
) -> int:
    """Print the messages of *channels* as JSON lines on stdout, and notices on stderr,
    until *count* messages, SIGINT or SIGTERM (exit status 0), or an error (1).

    With *since*, which belongs to one channel, its messages after that position are
    replayed first.
    """
    failures: list[ClarionError] = []
    # Installed before connecting, so that a signal at any time ends the command cleanly.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel("signal received")

            tg.start_soon(stop_on_signal)
            await _stream(url, token, channels, since, _Output(count, tg.cancel_scope), failures)
            tg.cancel_scope.cancel()
    return _error(failures[0]) if failures else 0


def run_api(url: str, api_key: str | None, command: str, arguments: dict[str, Any]) -> int:
    """Run one server API call (``clarion disconnect`` and the like) against *url*; print
    its answer as JSON on stdout; return the exit status: 1 if refused or unreachable, or
    when a broadcast was refused on some of its channels (each says why)."""

    async def call() -> int:
        api = ServerAPIClient(url, api_key=api_key)
        try:
            answer = await getattr(api, command)(**arguments)
        except ClarionError as exc:
            return _error(exc)
        sys.stdout.write(_encoder.encode({} if answer is None else answer).decode() + "\n")
        sys.stdout.flush()
        if command == "broadcast" and any("error" in result for result in answer):
            _say("error: refused on some channels (see each one's error)")
            return 1
        return 0

    return anyio.run(call)
