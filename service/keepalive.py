"""Pings for quiet connections: one task for the node, not a timer for each connection.

A connection that sends nothing for its door's ``quiet_seconds`` (``server.ping_interval_seconds``
for Clarion's protocol, an app's ``activity_timeout_seconds`` for Pusher's) is sent its
door's ping; one that still sends nothing for ``server.pong_timeout_seconds`` after it is
ended, and its session closes it as dead (4002, or the door's code for it).

Each connection's reader only notes that it heard from the client (`Quiet.heard`); one
`KeepAlive` task looks at every watched connection once a tick, so an idle connection
holds no timer, no cancel scope and no task for this (each of those costs it hundreds of
bytes, and a timer per received frame costs time). The price is precision: a ping goes
out up to one tick after the quiet time is over, and a dead connection is ended up to one
tick after its pong time. A tick is a quarter of the shortest quiet or pong time watched
since the node started, and at most `MAX_TICK_SECONDS`.
"""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from service.session import Handler

__all__ = ("KeepAlive", "MAX_TICK_SECONDS", "Quiet", "open_keepalive")

logger = logging.getLogger(__name__)

#: The longest a tick lasts (with the default 25 s ping interval, the tick).
MAX_TICK_SECONDS: Final = 1.0
#: Connections looked at between two checkpoints of the sweep, so that a node of many
#: connections does not stall its other tasks for the whole of it.
_SWEEP_BATCH: Final = 2_000


class Quiet:
    """One connection as the keep-alive sees it: watched for a ``with`` block, in which
    *handler* pings it and *stop* ends it.

    Without a *keepalive*, or a finite *quiet_seconds*, it is never pinged nor ended.
    """

    __slots__ = (
        "_keepalive",
        "handler",
        "heard",
        "pinged",
        "pong_seconds",
        "quiet_seconds",
        "since",
        "stop",
        "timed_out",
    )

    def __init__(
        self,
        keepalive: KeepAlive | None,
        handler: Handler,
        stop: anyio.CancelScope,
        quiet_seconds: float,
        pong_seconds: float,
    ) -> None:
        self._keepalive = keepalive if quiet_seconds < math.inf else None
        self.handler = handler
        self.stop = stop
        self.quiet_seconds = quiet_seconds
        self.pong_seconds = pong_seconds
        self.heard = True  # the quiet time starts at the keep-alive's first look
        """Set by the reader for each frame; cleared by the keep-alive when it looks."""
        self.since = 0.0
        """When the keep-alive last found the client heard from, or pinged it."""
        self.pinged = False
        self.timed_out = False
        """Whether the connection was ended as dead (its ``stop`` cancelled)."""

    def __enter__(self) -> Quiet:
        if self._keepalive is not None:
            self._keepalive.watch(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._keepalive is not None:
            self._keepalive.forget(self)


class KeepAlive:
    """Pings the quiet connections of a node and ends the dead ones (see the module)."""

    def __init__(self) -> None:
        self._watched: set[Quiet] = set()
        self._tick = MAX_TICK_SECONDS
        self._shorter: anyio.Event | None = None

    def watch(self, quiet: Quiet) -> None:
        """Look at *quiet* from now on (`Quiet` does, for its block)."""
        self._watched.add(quiet)
        tick = min(quiet.quiet_seconds, quiet.pong_seconds) / 4
        if tick < self._tick:
            self._tick = tick
            if self._shorter is not None:
                self._shorter.set()  # the sweeper's sleep was for the longer tick

    def forget(self, quiet: Quiet) -> None:
        """Look at *quiet* no more."""
        self._watched.discard(quiet)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Look at the watched connections once a tick, for as long as the node runs."""
        task_status.started()
        while True:
            self._shorter = anyio.Event()
            with anyio.move_on_after(self._tick):
                await self._shorter.wait()
            self._shorter = None
            watched = list(self._watched)
            for start in range(0, len(watched), _SWEEP_BATCH):
                if start:
                    await anyio.lowlevel.checkpoint()
                now = anyio.current_time()
                for quiet in watched[start : start + _SWEEP_BATCH]:
                    _look_at(quiet, now)


def _look_at(quiet: Quiet, now: float) -> None:
    """Reset, ping or end one connection, by what it sent since the last look."""
    if quiet.heard:
        quiet.heard = quiet.pinged = False
        quiet.since = now
    elif quiet.pinged:
        if now - quiet.since >= quiet.pong_seconds and not quiet.timed_out:
            quiet.timed_out = True
            quiet.stop.cancel()
    elif now - quiet.since >= quiet.quiet_seconds:
        quiet.pinged = True
        quiet.since = now
        try:
            quiet.handler.ping()
        except Exception:  # a bug in a door: that connection ends, the others are pinged
            logger.exception("pinging a connection failed")
            quiet.timed_out = True
            quiet.stop.cancel()


@asynccontextmanager
async def open_keepalive() -> AsyncIterator[KeepAlive]:
    """Run a `KeepAlive` for the block."""
    keepalive = KeepAlive()
    async with anyio.create_task_group() as tg:
        await tg.start(keepalive.run)
        try:
            yield keepalive
        finally:
            tg.cancel_scope.cancel()
