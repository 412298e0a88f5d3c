"""Sending outboxes: a flusher for all connections, a writer task only where one is needed.

Every frame costs one trip through the server's send path, whatever it holds, so what
matters is sending few frames and spending little per frame:

- Ticks are at least ``flush_delay_seconds`` apart, so that messages arriving in
  between share their frame; the first message after a quiet spell goes at once. One
  `Flusher` task ticks for every connection, instead of a timer each; under load its
  ticks come no faster than the event loop gets round to them, so batches grow with
  the load.
- Where a send that has to wait can be abandoned without losing its frame (hypercorn's
  asyncio worker hands the whole frame to the transport before it waits), the flusher
  sends itself, under an already-cancelled scope: a send that would wait for a slow
  client is left at once, and that connection gets a writer task of its own until it
  has caught up. Idle connections hold no task but their reader.
- Elsewhere (trio, whose sends always yield and cannot be abandoned midway) each busy
  connection gets a writer task, woken by the flusher's ticks a few at a time so that
  the tasks that read and publish get their turns between them; a writer that has
  had nothing to send for ``writer_linger_seconds`` ends.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from anyio.abc import TaskGroup, TaskStatus

    from channels.outbox import Outbox

__all__ = ("DIRECT_SEND_PATIENCE_SECONDS", "Flusher", "Sender", "Transport")

logger = logging.getLogger("clarion")

#: How long a direct send may wait before the flusher leaves it to a writer task. A send
#: to a client that keeps up never waits at all; the scope that enforces this covers a
#: whole batch of sends, so a slow client is left almost at once.
DIRECT_SEND_PATIENCE_SECONDS = 0.0005


class Transport(Protocol):
    """Where a connection's frames go (a WebSocket)."""

    async def send_text(self, data: str) -> None:
        """Send one text frame. Raises once the connection is unusable."""
        ...


class Flusher:
    """Tick for every connection that has something to send.

    Args:
        delay_seconds: how long a message waits for others to share its frame.
        batch_connections: connections served between two turns of the other tasks;
            None for the measured default of each mode (32 direct, 8 with writers).
        linger_seconds: how long an idle writer task waits before it ends.
        direct: whether the flusher may send itself (see the module docstring).
    """

    def __init__(
        self,
        delay_seconds: float,
        batch_connections: int | None,
        linger_seconds: float,
        *,
        direct: bool,
    ) -> None:
        self.delay_seconds = delay_seconds
        self.batch_connections = batch_connections or (32 if direct else 8)
        self.linger_seconds = linger_seconds
        self.direct = direct
        self._due: list[Sender] = []
        self._first_due: anyio.Event | None = None
        self._writers: set[Sender] = set()
        self._writer_group: TaskGroup | None = None
        self._last_sweep = 0.0
        self._last_tick_end = -math.inf

    def schedule(self, sender: Sender) -> None:
        """Serve *sender* at the next tick."""
        self._due.append(sender)
        if self._first_due is not None:
            self._first_due.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick while connections are due; sleep otherwise. Runs until cancelled.

        Writer tasks run in this call's task group, so that a connection costs no task
        group of its own; each connection cancels its writer when it ends.
        """
        async with anyio.create_task_group() as self._writer_group:
            task_status.started()
            try:
                await self._tick_forever()
            finally:
                self._writer_group = None

    def start_writer(self, writer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *writer* in the flusher's task group."""
        if self._writer_group is None:
            raise RuntimeError("the flusher is not running")
        self._writer_group.start_soon(writer)

    async def _tick_forever(self) -> None:
        while True:
            if not self._due:
                # Idle writers are told to end here, one timer for all of them.
                with anyio.move_on_after(self.linger_seconds if self._writers else math.inf):
                    self._first_due = anyio.Event()
                    await self._first_due.wait()
                self._first_due = None
            if anyio.current_time() - self._last_sweep >= self.linger_seconds:
                self._retire_idle_writers()
            if not self._due:
                continue
            # A tick follows the previous one by at least the delay, so that messages
            # arriving meanwhile share frames; after a quiet spell it goes at once.
            wait = self._last_tick_end + self.delay_seconds - anyio.current_time()
            if wait > 0:
                await anyio.sleep(wait)
            else:
                await anyio.lowlevel.checkpoint()
            due, self._due = self._due, []
            batch = self.batch_connections
            for start in range(0, len(due), batch):
                if start:
                    await anyio.lowlevel.checkpoint()
                if self.direct:
                    await self._send_directly(due[start : start + batch])
                else:
                    for sender in due[start : start + batch]:
                        sender._scheduled = False
                        if sender._done or sender._sending:
                            continue
                        if sender._outbox.pending or sender._writer:
                            sender._release_writer()
                        elif sender._outbox.closed:
                            sender._after_send()  # closed with nothing left: done
            self._last_tick_end = anyio.current_time()

    def _retire_idle_writers(self) -> None:
        now = self._last_sweep = anyio.current_time()
        for sender in list(self._writers):
            if sender._wakeup is not None and now - sender._idle_since >= self.linger_seconds:
                sender._retire = True
                sender._wakeup.set()

    async def _send_directly(self, senders: list[Sender]) -> None:
        """Send to each of *senders*, none of which may hold the flusher up.

        A send that has to wait (its client is slow) is abandoned at once, its frame
        already handed to the transport, and that connection gets a writer task. One
        cancel scope covers many sends: a scope per send would cost more than the send.
        """
        index = 0
        while index < len(senders):
            with anyio.move_on_after(DIRECT_SEND_PATIENCE_SECONDS) as scope:
                while index < len(senders):
                    sender = senders[index]
                    index += 1
                    sender._scheduled = False
                    if not sender._done and not sender._sending:
                        if sender._writer:
                            sender._release_writer()
                        else:
                            await sender._send_direct()
            if scope.cancelled_caught:
                senders[index - 1]._start_writer()


class Sender:
    """Send one connection's outbox to its transport, from the flusher or a writer task.

    Args:
        outbox: what to send.
        transport: where to send it.
        flusher: the hub's flusher, which also runs the writer task when one is needed.
        on_done: called once when the connection should end: its transport broke, or
            its outbox was closed and everything in it was sent.

    Call `stop` when the connection ends: it cancels the writer task.
    """

    __slots__ = (
        "_done",
        "_flusher",
        "_go",
        "_idle_since",
        "_on_done",
        "_outbox",
        "_retire",
        "_scheduled",
        "_sending",
        "_transport",
        "_wakeup",
        "_writer",
        "_writer_scope",
    )

    def __init__(
        self,
        outbox: Outbox,
        transport: Transport,
        flusher: Flusher,
        on_done: Callable[[], None],
    ) -> None:
        self._outbox = outbox
        self._transport = transport
        self._flusher = flusher
        self._on_done = on_done
        self._writer_scope: anyio.CancelScope | None = None
        self._scheduled = False
        self._sending = False
        self._writer = False
        self._go = False
        self._wakeup: anyio.Event | None = None
        self._idle_since = 0.0
        self._retire = False
        self._done = False
        outbox.notify = self.due
        if outbox.pending or outbox.closed:
            self.due()  # filled or closed before this sender existed (a drain at accept)

    def due(self) -> None:
        """Have the outbox sent at the flusher's next tick."""
        if not self._scheduled and not self._done:
            self._scheduled = True
            self._flusher.schedule(self)

    async def flush(self) -> None:
        """Send now what is pending from the calling task, or have the writer do it.

        The connection's own reader calls this (after a reply): it waits for its client
        if it has to, which no other connection notices.
        """
        if self._done or self._sending:
            return  # a running send looks for more when it ends
        if self._writer:
            self._release_writer()
        else:
            await self._send_direct()

    def stop(self) -> None:
        """The connection is ending: send nothing more, and end the writer task."""
        self._done = True
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    async def _send_direct(self) -> None:
        frame = self._outbox.take_frame()
        if frame is None or await self._send(frame):
            self._after_send()

    async def _send(self, frame: str) -> bool:
        """Send *frame*; return False (and end the connection) if the transport broke."""
        self._sending = True
        try:
            await self._transport.send_text(frame)
        except Exception as exc:
            self._broken(exc)
            return False
        finally:
            self._sending = False
        return True

    def _release_writer(self) -> None:
        """Let the writer send its next batch, starting it if needed."""
        if self._writer:
            self._go = True
            if self._wakeup is not None:
                self._wakeup.set()
        else:
            self._start_writer()

    def _start_writer(self) -> None:
        if not self._writer and not self._done:
            self._writer = True
            self._go = True
            self._idle_since = anyio.current_time()
            self._flusher._writers.add(self)
            self._flusher.start_writer(self._write)

    async def _write(self) -> None:
        """A writer task: send batches as ticks allow; end once told it idled too long."""
        try:
            with anyio.CancelScope() as self._writer_scope:
                if not self._done:
                    await self._write_batches()
        except Exception as exc:  # never let one connection take the flusher down
            logger.exception("writer failed")
            self._broken(exc)
        finally:
            self._flusher._writers.discard(self)
            self._writer = self._retire = False
            self._wakeup = self._writer_scope = None

    async def _write_batches(self) -> None:
        outbox = self._outbox
        while not self._done:
            if not (self._go and outbox.pending):
                if outbox.closed:
                    self._after_send()
                    return
                self._idle_since = anyio.current_time()
                while not self._should_wake():
                    if self._retire:
                        return  # a tick starts a new writer when there is more
                    self._wakeup = anyio.Event()
                    await self._wakeup.wait()
                    self._wakeup = None
                continue
            self._go = self._retire = False
            frame = outbox.take_frame()
            if frame is None:
                continue
            if not await self._send(frame):
                return
            if outbox.pending:
                self.due()  # the rest goes at the next tick

    def _should_wake(self) -> bool:
        """Whether a waiting writer has something to do: send, end, or finish a close."""
        return (self._go and self._outbox.pending) or self._done or self._outbox.closed

    def _after_send(self) -> None:
        if self._outbox.pending:
            self.due()
        elif self._outbox.closed and not self._done:
            self._done = True
            self._on_done()

    def _broken(self, exc: Exception) -> None:
        logger.debug("send failed, ending the connection: %r", exc)
        if not self._done:
            self._done = True
            self._on_done()
