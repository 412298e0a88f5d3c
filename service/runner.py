"""Run the app under hypercorn: the only module that picks the trio or asyncio worker."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import anyio
import hypercorn.asyncio
import hypercorn.config
import hypercorn.trio
import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from hypercorn.config import Sockets

    from channels.config import Config
    from service.app import Clarion

__all__ = (
    "Backend",
    "HypercornConfig",
    "hypercorn_config",
    "run",
    "sends_can_be_abandoned",
    "serve",
)

Backend = Literal["asyncio", "trio"]
logger = logging.getLogger("clarion")


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


def sends_can_be_abandoned() -> bool:
    """Whether the running hypercorn worker lets a waiting send be abandoned safely.

    Call it from inside hypercorn's event loop.

    hypercorn's asyncio worker writes a whole frame to the transport before it waits
    for the client (``StreamWriter.drain``), so cancelling that wait loses nothing. Its
    trio worker yields before it writes (and shields the write), so a cancelled send
    could lose a frame that the WebSocket state machine already counted as sent.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return True  # not trio: asyncio (or uvloop)
    return False


def hypercorn_config(config: Config) -> HypercornConfig:
    """Translate Clarion's server options into a hypercorn configuration."""
    result = HypercornConfig()
    result.write_timeout_seconds = config.server.write_timeout_seconds
    result.bind = [config.server.bind]
    result.websocket_max_message_size = config.server.max_request_bytes
    # Our own drain closes clients within shutdown_grace_seconds; give hypercorn a
    # moment more so that it never cuts a close frame short.
    result.graceful_timeout = config.server.shutdown_grace_seconds + 1.0
    # Hand hypercorn our logger so that it adds no second handler of its own.
    result.errorlog = logging.getLogger("hypercorn.error")
    return result


async def serve(
    app: Clarion,
    config: hypercorn.config.Config,
    backend: Backend,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
) -> None:
    """Serve *app* with hypercorn's worker for *backend*, in the running event loop.

    When *shutdown_trigger* returns, the app drains first (every client gets its queued
    messages, then close 1001), and only then does hypercorn stop. Returns once
    hypercorn has shut down.
    """

    async def drain_then_stop() -> None:
        await shutdown_trigger()
        await app.drain()

    if backend == "trio":
        await hypercorn.trio.serve(app, config, shutdown_trigger=drain_then_stop)  # type: ignore[arg-type]  # hypercorn's Framework type is narrower than ASGI
        return
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(partial(_quiet_dropped_clients, previous))
    try:
        await hypercorn.asyncio.serve(app, config, shutdown_trigger=drain_then_stop)  # type: ignore[arg-type]  # same
    finally:
        loop.set_exception_handler(previous)


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


def run(app: Clarion, backend: Backend) -> None:
    """Serve *app* until SIGINT or SIGTERM, then drain its clients (close 1001) and exit."""

    async def wait_for_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("%s received: closing connections", signal.Signals(signum).name)
                return

    run_serve = partial(serve, shutdown_trigger=wait_for_signal)
    anyio.run(run_serve, app, hypercorn_config(app.config), backend, backend=backend)
