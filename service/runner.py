"""Run the app under hypercorn: the only module that picks the trio or asyncio worker."""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import signal
import socket
from contextlib import suppress
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import hypercorn.asyncio.run
import hypercorn.asyncio.task_group
import hypercorn.asyncio.tcp_server
import hypercorn.config
import hypercorn.trio.run
import hypercorn.trio.task_group
import hypercorn.trio.tcp_server
import hypercorn.utils
import trio

from channels.errors import ConfigError
from service.fastlane import FastLane, Lane
from service.logs import configure_logging

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hypercorn.config import Sockets

    from service.app import Clarion
    from service.settings import ConfigSource, Settings
    from service.types import Message, Receive, Scope, Send

__all__ = (
    "AFTER_DRAIN_SECONDS",
    "Backend",
    "HypercornConfig",
    "hypercorn_config",
    "run",
    "run_workers",
    "serve",
)

#: How long connections still open after the drain's grace get before they are cut off.
AFTER_DRAIN_SECONDS: Final = 1.0

Backend = Literal["asyncio", "trio", "uvloop"]
"""hypercorn's worker and its event loop: uvloop is the asyncio worker on uvloop's loop."""
logger = logging.getLogger("clarion")
#: The signals a server handles: SIGINT and SIGTERM drain it, SIGHUP reloads it.
_HANDLED: Final = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class HypercornConfig(hypercorn.config.Config):
    """hypercorn's configuration, plus a send timeout on every accepted TCP connection.

    A WebSocket whose client stops reading would otherwise block its sender for good:
    hypercorn shields its socket writes from cancellation. TCP_USER_TIMEOUT, set on the
    listening sockets and inherited by accepted ones, makes the kernel drop such a
    connection once sent data goes unacknowledged for ``write_timeout_seconds``.
    """

    write_timeout_seconds: float | None = None

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        if self.write_timeout_seconds is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
            milliseconds = max(1, round(self.write_timeout_seconds * 1000))
            for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
                if sock.family in {socket.AF_INET, socket.AF_INET6}:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, milliseconds)
        return sockets


def hypercorn_config(config: Settings) -> HypercornConfig:
    """Translate Clarion's server options into a hypercorn configuration."""
    result = HypercornConfig()
    result.write_timeout_seconds = config.server.write_timeout_seconds
    result.bind = [config.server.bind]
    result.backlog = config.server.listen_backlog
    result.websocket_max_message_size = config.server.max_request_bytes
    # hypercorn's keep-alive timer runs from the moment a connection opens until a whole
    # request has arrived (and again between requests): a client that never finishes
    # its handshake is closed when it fires. WebSocket connections are not affected.
    result.keep_alive_timeout = config.server.handshake_timeout_seconds
    result.ssl_handshake_timeout = config.server.handshake_timeout_seconds
    # hypercorn's graceful timeout starts once our drain is over (`serve`): the drain
    # gave clients shutdown_grace_seconds, so those still connected then get only a
    # moment more for their close frames before hypercorn cancels them.
    result.graceful_timeout = AFTER_DRAIN_SECONDS
    # Hand hypercorn our logger so that it adds no second handler of its own.
    result.errorlog = logging.getLogger("hypercorn.error")
    return result


async def serve(
    app: Clarion,
    config: hypercorn.config.Config,
    backend: Backend,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    sockets: Sockets | None = None,
) -> None:
    """Serve *app* with hypercorn's worker for *backend*, in the running event loop.

    When *shutdown_trigger* returns, the app drains first (every client gets its queued
    messages, then close 1001), and only then does hypercorn stop. Returns once
    hypercorn has shut down. *sockets* are listening sockets to share with other worker
    processes; by default hypercorn binds its own.
    """

    async def drain_then_stop() -> None:
        await shutdown_trigger()
        await app.drain()

    # hypercorn's TCP servers look their protocol up here at each connection.
    hypercorn.trio.tcp_server.ProtocolWrapper = _ClarionLane  # type: ignore[attr-defined]  # imported there, not exported
    hypercorn.asyncio.tcp_server.ProtocolWrapper = _ClarionLane  # type: ignore[attr-defined]
    # ... and the task group of each connection.
    hypercorn.trio.tcp_server.TaskGroup = _ContainedTrioTasks  # type: ignore[attr-defined]
    hypercorn.asyncio.tcp_server.TaskGroup = _ContainedAsyncioTasks  # type: ignore[attr-defined]
    if backend == "trio":
        guarded = partial(_answer_or_drop, app)
        wrapped = hypercorn.utils.wrap_app(guarded, config.wsgi_max_body_size, "asgi")
        await hypercorn.trio.run.worker_serve(
            wrapped, config, sockets=sockets, shutdown_trigger=drain_then_stop
        )
        return
    wrapped = hypercorn.utils.wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]  # hypercorn's Framework type is narrower than ASGI
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(partial(_quiet_dropped_clients, previous))
    try:
        await hypercorn.asyncio.run.worker_serve(
            wrapped, config, sockets=sockets, shutdown_trigger=drain_then_stop
        )
    finally:
        loop.set_exception_handler(previous)


def _lane_of(wrapper: Any) -> tuple[Lane, int] | None:
    """The fast lane of the Clarion app inside hypercorn's app *wrapper*, if it is one."""
    from service.app import Clarion

    app = getattr(wrapper, "app", None)
    if isinstance(app, partial) and app.func is _answer_or_drop:
        app = app.args[0]
    if isinstance(app, Clarion):
        return app.lane
    return None


class _ClarionLane(FastLane):
    """hypercorn's protocol wrapper with Clarion's fast lane (`service.fastlane`)."""

    lane_of = staticmethod(_lane_of)


class _Contained:
    """hypercorn's task group of one connection, whose errors end only that connection.

    In hypercorn (0.18) an error that escapes one connection's handler ends the whole
    trio server (asyncio logs it with a traceback), and some hostile packets cause one
    (see `service.wsstream` for those known, and fixed there). Whatever hypercorn fails
    on next, one client must not take the node down: the error is logged in a line and
    the connection closed (by the handler's own ``finally``). Cancellation goes on.

    Each worker's ``TCPServer.run`` holds its connection's work (the protocol, the app,
    the idle timer) in this task group: catching here rather than around ``run`` costs an
    idle connection no coroutine of its own.
    """

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, tb: Any
    ) -> bool:
        try:
            await super().__aexit__(exc_type, exc_value, tb)  # type: ignore[misc]  # a mixin
        except Exception as exc:
            logger.warning("closed a connection after an error in hypercorn: %r", exc)
            logger.debug("the error in hypercorn", exc_info=exc)
            return True
        return False


# Their __aexit__ returns whether it kept the error from going on; hypercorn's, None.
class _ContainedTrioTasks(_Contained, hypercorn.trio.task_group.TaskGroup):  # type: ignore[misc]
    pass


class _ContainedAsyncioTasks(_Contained, hypercorn.asyncio.task_group.TaskGroup):  # type: ignore[misc]
    pass


def _answer_or_drop(app: Clarion, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
    """Run *app*; an answer whose connection hypercorn is closing is dropped quietly.

    When a client sends more bytes after a ``connection: close`` answer (the rest of a
    body over ``max_request_bytes``), hypercorn's trio worker (0.18,
    ``TCPServer._close``) sends EOF outside its send lock while the answer is written,
    and the write raises
    ``trio.BusyResourceError``, logged as a traceback for each such request. The client
    is going away and cannot get the answer; there is nothing to report.

    A plain function: a WebSocket's call is the app's own, with no frame of this one
    held for as long as the connection lasts.
    """
    if scope["type"] != "http":
        # A WebSocket's send stays hypercorn's own: `service.framewriter` and
        # `service.wsstream` find the connection through it.
        return app(scope, receive, send)

    async def send_or_drop(message: Message) -> None:
        try:
            await send(message)
        except trio.BusyResourceError:
            logger.debug("dropped an answer to a client whose connection is closing")

    return app(scope, receive, send_or_drop)


def _quiet_dropped_clients(
    previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
    loop: asyncio.AbstractEventLoop,
    context: dict[str, Any],
) -> None:
    """Log a client dropped by the write timeout instead of an "unhandled" traceback.

    hypercorn's asyncio worker does not expect ETIMEDOUT when it closes a connection
    (hypercorn 0.18, ``TCPServer._close``), which is what TCP_USER_TIMEOUT produces.
    """
    exception = context.get("exception")
    if isinstance(exception, OSError) and exception.errno == errno.ETIMEDOUT:
        logger.info("dropped a client that stopped reading: %s", exception)
    elif previous is not None:
        previous(loop, context)
    else:
        loop.default_exception_handler(context)


async def _serve_until_signal(
    app: Clarion, settings: hypercorn.config.Config, backend: Backend, sockets: Sockets | None
) -> None:
    # The handlers are in place before the first client is accepted, so that a signal
    # always drains: a worker signalled while it starts must not die with its clients.
    stop = anyio.Event()
    with anyio.open_signal_receiver(*_HANDLED) as signals:
        # A worker starts with these blocked (`run_workers`): one sent while it started
        # waited, and arrives now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)

        async def watch() -> None:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    logger.info("SIGHUP received: reloading the configuration")
                    with suppress(ConfigError):  # logged; the running configuration stays
                        await app.reload()
                    continue
                logger.info("%s received: closing connections", signal.Signals(signum).name)
                stop.set()
                return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await serve(app, settings, backend, shutdown_trigger=stop.wait, sockets=sockets)
                tg.cancel_scope.cancel()
        finally:
            # Blocked again before the receiver puts the default handlers back: a
            # signal now (a SIGHUP forwarded as the workers stop) must not end a process
            # that is finishing cleanly.
            signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)


def run(app: Clarion, backend: Backend, sockets: Sockets | None = None) -> None:
    """Serve *app* until SIGINT or SIGTERM, then drain its clients (close 1001) and exit.

    SIGHUP reloads the configuration (`Clarion.reload`). *sockets* are the listening
    sockets (`service.sockets.bind_sockets`); by default hypercorn binds its own. The
    three signals stay blocked once it returns: the process is meant to exit then.
    """
    settings = hypercorn_config(app.config)
    # Until the signal receiver is in place, a signal waits (a SIGHUP must not end the
    # process); a worker of `run_workers` started with them blocked already.
    signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
    anyio.run(
        _serve_until_signal,
        app,
        settings,
        backend,
        sockets,
        backend="trio" if backend == "trio" else "asyncio",
        backend_options={"use_uvloop": True} if backend == "uvloop" else None,
    )


def _worker(config: Settings, source: ConfigSource, backend: Backend, sockets: Sockets) -> None:
    from service.app import Clarion

    configure_logging(config.server.log_level, config.server.log_format)
    run(Clarion(config, source), backend, sockets)


def run_workers(
    config: Settings, source: ConfigSource, backend: Backend, workers: int, sockets: Sockets
) -> int:
    """Serve *config* (read from *source*) with *workers* processes sharing the listening
    *sockets* (`service.sockets.bind_sockets`), which are theirs from then on.

    Each process is a node of its own (a shared broker joins them). On SIGINT or SIGTERM
    every worker drains its clients and exits; on SIGHUP every worker reloads its
    configuration; if a worker dies, the others are stopped too. Returns the exit
    status: 0 after a signal, 1 if a worker failed.
    """
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker, args=(config, source, backend, sockets), name=f"worker-{index}"
        )
        for index in range(workers)
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def reload(signum: int, frame: object) -> None:
        if stopping:
            return  # the workers are draining: nothing to reload
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGHUP)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
    # The workers start with the signals blocked, a mask they inherit, until their own
    # receiver is in place: a signal sent while one starts then waits for it, so that it
    # drains and exits 0 instead of dying half-started (or stopping at a SIGHUP). The
    # resource tracker runs first because starting it unblocks SIGINT and SIGTERM.
    multiprocessing.resource_tracker.ensure_running()
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
    try:
        try:
            for process in processes:
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
            sock.close()  # the workers hold them now
        sentinels = [process.sentinel for process in processes]
        while not stopping and not multiprocessing.connection.wait(sentinels, timeout=0.2):
            pass
        if not stopping:
            logger.error("a worker exited: stopping the others")
        for process in processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: the worker drains its clients
        grace = config.server.shutdown_grace_seconds + 5.0
        for process in processes:
            process.join(grace)
            if process.is_alive():
                process.kill()
                process.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failed = [process for process in processes if process.exitcode != 0]
    for process in failed:
        logger.error("%s exited with status %s", process.name, process.exitcode)
    return 1 if failed or not stopping else 0
