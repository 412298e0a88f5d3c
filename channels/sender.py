"""Sending outboxes: one flusher for all connections, a task only where one must wait.

Every frame costs one trip to the socket whatever it holds, so what matters is sending
few frames and spending little per frame:

- Ticks are at least ``flush_delay_seconds`` apart, so that messages arriving in
  between share their frame; the first message after a quiet spell goes at once. One
  `Flusher` task ticks for every connection, instead of a timer each; under load its
  ticks come no faster than the event loop gets round to them, so batches grow with
  the load.
- Where a connection has a `FrameWriter` (a socket that takes whole frames without
  waiting, see ``service.framewriter``), the flusher writes its next frame itself: no
  await and no task switch per frame. A connection whose socket is full gets a task
  that waits until its client has read enough, then hands it back to the flusher.
  Idle connections hold no task but their reader.
- Elsewhere each busy connection gets a writer task that sends through its awaitable
  `Transport`, released by the flusher's ticks a few at a time so that the tasks that
  read and publish get their turns between them; a writer that has had nothing to
  send for ``writer_linger_seconds`` ends.
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

__all__ = ("Flusher", "FrameWriter", "Sender", "Transport")

logger = logging.getLogger("clarion")

#: Writer tasks released between two turns of the other tasks, unless configured. On
#: trio a released writer runs before the flusher's next turn, and releasing more at
#: once starved the publisher's reader (measured: 3,800 deliveries/s with all at once).
_WRITERS_PER_TURN = 8
#: Direct writes between two turns of the other tasks, unless configured. A published
#: message reaches the hub only after several turns (socket, hypercorn, the reader), so
#: short turns keep it moving: at 1,000 x 200 msg/s, p99 54-65 ms with 32, 61-68 ms with
#: 64 and 107-126 ms with 256 on trio (the same on asyncio), at the same CPU.
_WRITES_PER_TURN = 32
#: Frames a connection whose wire sends a message per frame (Pusher's) is sent per serve
#: at most, while its socket takes them (Clarion's protocol joins what waits into one
#: frame): at a tick per 5 ms, up to 50,000 messages a second per connection.
_FRAMES_PER_SERVE = 256


class Transport(Protocol):
    """Where a connection's frames go when they may have to wait (a WebSocket)."""

    async def send_text(self, data: str) -> None:
        """Send one text frame. Raises once the connection is unusable."""
        ...


class FrameWriter(Protocol):
    """A connection's socket, written to whole frames at a time and never waited on."""

    def writable(self) -> bool:
        """Whether `write_nowait` would take a frame now.

        Raises:
            anyio.BrokenResourceError: if the connection is gone or closing.
        """
        ...

    def write_nowait(self, payload: bytes) -> bool:
        """Write *payload* as one text frame, without waiting; only right after
        `writable` returned True.

        Returns:
            Whether the connection is still writable. When it is not, the frame may be
            unfinished: call `wait_writable` soon, even if there is nothing more to send.

        Raises:
            anyio.BrokenResourceError: if the connection broke.
        """
        ...

    async def wait_writable(self) -> None:
        """Wait until `writable` holds again (the client read what was written).

        Raises:
            anyio.BrokenResourceError: if the connection broke meanwhile.
        """
        ...


class Flusher:
    """Tick for every connection that has something to send.

    Args:
        delay_seconds: how long a message waits for others to share its frame.
        batch_connections: connections served between two turns of the other tasks;
            None for the measured defaults (32 direct writes, or 8 writer tasks).
        linger_seconds: how long an idle writer task waits before it ends.
    """

    def __init__(
        self, delay_seconds: float, batch_connections: int | None, linger_seconds: float
    ) -> None:
        self.reconfigure(delay_seconds, batch_connections, linger_seconds)
        self._due: list[Sender] = []
        self._first_due: anyio.Event | None = None
        self._writers: set[Sender] = set()
        self._task_group: TaskGroup | None = None
        self._last_sweep = 0.0
        self._last_tick_end = -math.inf

    def reconfigure(
        self, delay_seconds: float, batch_connections: int | None, linger_seconds: float
    ) -> None:
        """Apply new settings from the next tick on (the arguments are as for the class)."""
        self.delay_seconds = delay_seconds
        self.writes_per_turn = batch_connections or _WRITES_PER_TURN
        self.writers_per_turn = batch_connections or _WRITERS_PER_TURN
        self.linger_seconds = linger_seconds

    def schedule(self, sender: Sender) -> None:
        """Serve *sender* at the next tick."""
        self._due.append(sender)
        if self._first_due is not None:
            self._first_due.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick while connections are due; sleep otherwise. Runs until cancelled.

        The connections' tasks run in this call's task group, so that a connection
        costs no task group of its own; each connection cancels its task when it ends.
        """
        async with anyio.create_task_group() as self._task_group:
            task_status.started()
            try:
                await self._tick_forever()
            finally:
                self._task_group = None

    def start_task(self, task: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run *task* in the flusher's task group."""
        if self._task_group is None:
            raise RuntimeError("the flusher is not running")
        self._task_group.start_soon(task)

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
            writes = released = 0
            for sender in due:
                if sender._serve():
                    released += 1
                else:
                    writes += 1
                if writes >= self.writes_per_turn or released >= self.writers_per_turn:
                    writes = released = 0
                    await anyio.lowlevel.checkpoint()
            self._last_tick_end = anyio.current_time()

    def _retire_idle_writers(self) -> None:
        now = self._last_sweep = anyio.current_time()
        for sender in list(self._writers):
            if sender._wakeup is not None and now - sender._idle_since >= self.linger_seconds:
                sender._retire = True
                sender._wakeup.set()


class Sender:
    """Send one connection's outbox: written by the flusher, or by a task of its own.

    Args:
        outbox: what to send.
        transport: where to send it when a send may have to wait.
        flusher: the hub's flusher, which also runs the connection's task if it needs one.
        on_done: called once when the connection should end: its transport broke, or
            its outbox was closed and everything in it was sent.
        frames: the connection's socket, when it can be written without waiting; None
            sends everything through *transport* from a writer task.

    Call `stop` when the connection ends: it cancels the connection's task.
    """

    __slots__ = (
        "_done",
        "_flusher",
        "_frames",
        "_go",
        "_idle_since",
        "_on_done",
        "_outbox",
        "_retire",
        "_scheduled",
        "_task_scope",
        "_transport",
        "_waiting",
        "_wakeup",
        "_writer",
    )

    def __init__(
        self,
        outbox: Outbox,
        transport: Transport,
        flusher: Flusher,
        on_done: Callable[[], None],
        frames: FrameWriter | None = None,
    ) -> None:
        self._outbox = outbox
        self._transport = transport
        self._frames = frames
        self._flusher = flusher
        self._on_done = on_done
        self._task_scope: anyio.CancelScope | None = None
        self._scheduled = False
        self._waiting = False  # a task waits for the socket to take frames again
        self._writer = False  # a writer task sends through the transport
        self._go = False
        self._wakeup: anyio.Event | None = None
        self._idle_since = 0.0
        self._retire = False
        self._done = False
        outbox.notify = self.due
        if outbox.pending or outbox.closed:
            self.due()  # filled or closed before this sender existed (a drain at accept)

    @property
    def direct(self) -> bool:
        """Whether frames are written to the socket without waiting (a `FrameWriter`)."""
        return self._frames is not None

    def due(self) -> None:
        """Have the outbox sent at the flusher's next tick."""
        if not self._scheduled and not self._done:
            self._scheduled = True
            self._flusher.schedule(self)

    def flush(self) -> None:
        """Send what is pending now rather than at the next tick; never waits.

        The connection's reader calls this after a reply. With a `FrameWriter` the next
        frame is written at once; otherwise the writer task is released to send it.
        """
        if not self._done and not self._waiting:
            self._write_or_release()

    def stop(self) -> None:
        """The connection is ending: send nothing more, and end its task."""
        self._done = True
        if self._task_scope is not None:
            self._task_scope.cancel()

    def _serve(self) -> bool:
        """Serve one tick; return True if that released a writer task (a costlier turn)."""
        self._scheduled = False
        if self._done or self._waiting:
            return False
        return self._write_or_release()

    def _write_or_release(self) -> bool:
        """Write the next frame, or hand it to a task; True if a writer was released."""
        if self._writer:
            self._go = True
            if self._wakeup is not None:
                self._wakeup.set()
            return True
        outbox, frames = self._outbox, self._frames
        if frames is None:
            if outbox.pending:
                self._start_writer()
                return True
            self._after_send()
            return False
        try:
            if frames.writable():
                # One frame, or for a wire that sends a message per frame, as many as
                # the socket takes (up to a bound, so that others get their turn).
                full = False
                most = 1 if outbox.encoding.batches else _FRAMES_PER_SERVE
                for _ in range(most):
                    payload = outbox.take_frame()
                    if payload is None:
                        break
                    if not frames.write_nowait(payload):
                        full = True
                        break
                    if not outbox.pending:
                        break
                if not full:
                    self._after_send()
                    return False
            elif not outbox.pending:
                return False
        except (anyio.BrokenResourceError, OSError) as exc:
            self._broken(exc)
            return False
        # The socket is full (and the last frame perhaps unfinished): wait for it.
        self._waiting = True
        self._flusher.start_task(self._wait_writable)
        return False

    async def _wait_writable(self) -> None:
        """A task: wait for the socket to drain, then hand the connection back."""
        if self._frames is None:
            raise RuntimeError("no frame writer to wait for")
        try:
            with anyio.CancelScope() as self._task_scope:
                await self._frames.wait_writable()
        except (anyio.BrokenResourceError, OSError) as exc:
            self._broken(exc)
        finally:
            self._task_scope = None
            self._waiting = False
        self.due()

    def _start_writer(self) -> None:
        self._writer = True
        self._go = True
        self._idle_since = anyio.current_time()
        self._flusher._writers.add(self)
        self._flusher.start_task(self._write)

    async def _write(self) -> None:
        """A writer task: send batches as ticks allow; end once told it idled too long."""
        try:
            with anyio.CancelScope() as self._task_scope:
                if not self._done:
                    await self._write_batches()
        except Exception as exc:  # never let one connection take the flusher down
            logger.exception("writer failed")
            self._broken(exc)
        finally:
            self._flusher._writers.discard(self)
            self._writer = self._retire = False
            self._wakeup = self._task_scope = None

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
            # What arrives while a frame is sent waits to be joined into the next one;
            # a wire that sends a message per frame sends on.
            for _ in range(1 if outbox.encoding.batches else _FRAMES_PER_SERVE):
                payload = outbox.take_frame()
                if payload is None:
                    break
                try:
                    await self._transport.send_text(payload.decode())
                except Exception as exc:
                    self._broken(exc)
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
