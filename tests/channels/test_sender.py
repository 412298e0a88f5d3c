"""The flusher and the per-connection senders, with in-memory sockets and transports.

Most tests run both ways a connection can send: ``direct`` (a `FrameWriter`, written by
the flusher itself) and ``writers`` (an awaitable transport, sent by writer tasks).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
import pytest

from channels.outbox import Delivery, Outbox
from channels.sender import Flusher, Sender
from tests.support.encoding import TextEncoding

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

MODES = pytest.mark.parametrize("direct", [True, False], ids=["direct", "writers"])


class Transport:
    """Records frames sent through it. While *blocked*, a send first hands its frame
    over, then waits (as hypercorn does for a client that does not read)."""

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.blocked: anyio.Event | None = None
        self.broken = False
        self.sent = anyio.Event()

    async def send_text(self, data: str) -> None:
        if self.broken:
            raise OSError("connection reset")
        self.frames.append(data)
        self.sent.set()
        if self.blocked is not None:
            await self.blocked.wait()


class Socket:
    """A `FrameWriter` in memory. While *full* it takes nothing, and `wait_writable`
    waits for `drain`; *broken* makes every write and wait fail."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport  # records the frames, so that both modes read alike
        self.full = False
        self.full_after_next = False  # the next write fills the socket
        self.broken = False
        self.waits = 0
        self._drained = anyio.Event()

    def writable(self) -> bool:
        if self.broken:
            raise anyio.BrokenResourceError("connection reset")
        return not self.full

    def write_nowait(self, payload: bytes) -> bool:
        if self.full or self.broken:
            raise AssertionError("written while not writable")
        self.transport.frames.append(payload.decode())
        self.transport.sent.set()
        self.full = self.full_after_next
        return not self.full

    async def wait_writable(self) -> None:
        self.waits += 1
        while not self.writable():  # raises once broken
            await self._drained.wait()

    def drain(self) -> None:
        self.full = False
        self._drained.set()
        self._drained = anyio.Event()

    def break_(self) -> None:
        self.broken = True
        self._drained.set()


class Connection:
    def __init__(self, flusher: Flusher, *, direct: bool) -> None:
        self.transport = Transport()
        self.socket = Socket(self.transport) if direct else None
        self.outbox = Outbox(100, 1000, TextEncoding())
        self.done = 0
        self.sender = Sender(self.outbox, self.transport, flusher, self._done, self.socket)

    def _done(self) -> None:
        self.done += 1

    @property
    def frames(self) -> list[str]:
        return self.transport.frames

    def offer(self, *offsets: int) -> None:
        for offset in offsets:
            self.outbox.offer(Delivery("c", offset, f"m{offset}".encode()))

    async def wait_frames(self, count: int) -> list[str]:
        while len(self.frames) < count:
            self.transport.sent = anyio.Event()
            await self.transport.sent.wait()
        return self.frames

    def break_(self) -> None:
        self.transport.broken = True
        if self.socket is not None:
            self.socket.break_()


@asynccontextmanager
async def flushing(delay: float = 0.01, linger: float = 1.0) -> AsyncIterator[Flusher]:
    flusher = Flusher(delay, 2, linger)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(flusher.run)
            yield flusher
            tg.cancel_scope.cancel()


def messages(frames: list[str]) -> list[str]:
    """The messages of *frames*, in order, whatever frames carried them."""
    return [text for frame in frames for text in frame.strip("[]").split(",")]


@MODES
async def test_messages_within_the_delay_share_one_frame(direct: bool) -> None:
    async with flushing(delay=0.05) as flusher:
        connection = Connection(flusher, direct=direct)
        connection.offer(1, 2, 3)
        assert await connection.wait_frames(1) == ["[m1,m2,m3]"]


@MODES
async def test_after_a_quiet_spell_the_first_message_goes_at_once(direct: bool) -> None:
    # With a delay far beyond the test's deadline, only the leading edge can send.
    async with flushing(delay=3600) as flusher:
        connection = Connection(flusher, direct=direct)
        connection.offer(1)
        assert await connection.wait_frames(1) == ["m1"]
        connection.offer(2)  # the next tick waits for the delay: nothing more goes
        await anyio.wait_all_tasks_blocked()
        assert connection.frames == ["m1"]


@MODES
async def test_every_connection_gets_its_frames_in_order(direct: bool) -> None:
    async with flushing() as flusher:
        connections = [Connection(flusher, direct=direct) for _ in range(7)]
        for offset in range(1, 4):
            for connection in connections:
                connection.offer(offset)
            for connection in connections:
                await connection.wait_frames(offset)
        for connection in connections:
            assert connection.frames == ["m1", "m2", "m3"]


async def test_direct_connections_are_written_without_a_task() -> None:
    async with flushing(delay=0) as flusher:
        tasks = len(anyio.get_running_tasks())
        connections = [Connection(flusher, direct=True) for _ in range(5)]
        for offset in range(1, 4):
            for connection in connections:
                connection.offer(offset)
                connection.sender.flush()
            await anyio.wait_all_tasks_blocked()
            assert len(anyio.get_running_tasks()) == tasks
        assert all(messages(c.frames) == ["m1", "m2", "m3"] for c in connections)
        assert all(c.sender.direct for c in connections)


async def test_a_full_socket_gets_a_task_until_it_drains_and_holds_up_no_one() -> None:
    async with flushing() as flusher:
        slow, fast = Connection(flusher, direct=True), Connection(flusher, direct=True)
        assert slow.socket is not None
        tasks = len(anyio.get_running_tasks())
        slow.offer(1)
        fast.offer(1)
        await slow.wait_frames(1)
        slow.socket.full = True
        for offset in range(2, 5):
            slow.offer(offset)
            fast.offer(offset)
            await fast.wait_frames(offset)
        await anyio.wait_all_tasks_blocked()
        assert slow.frames == ["m1"]
        assert len(anyio.get_running_tasks()) == tasks + 1  # the slow one waits
        slow.socket.drain()
        while messages(slow.frames) != ["m1", "m2", "m3", "m4"]:
            await slow.wait_frames(len(slow.frames) + 1)
        await anyio.wait_all_tasks_blocked()
        assert len(anyio.get_running_tasks()) == tasks  # back to the flusher alone
        assert slow.socket.waits == 1


async def test_a_blocked_writer_holds_up_no_one() -> None:
    async with flushing() as flusher:
        slow, fast = Connection(flusher, direct=False), Connection(flusher, direct=False)
        slow.transport.blocked = anyio.Event()
        slow.offer(1)
        fast.offer(1)
        await slow.wait_frames(1)
        for offset in range(2, 5):
            slow.offer(offset)
            fast.offer(offset)
            await fast.wait_frames(offset)
        assert slow.frames == ["m1"]
        slow.transport.blocked.set()
        slow.transport.blocked = None
        while messages(slow.frames) != ["m1", "m2", "m3", "m4"]:
            await slow.wait_frames(len(slow.frames) + 1)


async def test_an_idle_writer_ends_after_lingering() -> None:
    async with flushing(linger=0.05) as flusher:
        tasks = len(anyio.get_running_tasks())
        connection = Connection(flusher, direct=False)
        connection.offer(1)
        await connection.wait_frames(1)
        assert len(anyio.get_running_tasks()) == tasks + 1
        await anyio.sleep(0.3)  # well past the 0.05 s linger, a timer in the writer
        assert len(anyio.get_running_tasks()) == tasks
        connection.offer(2)  # a new writer starts when there is more
        assert await connection.wait_frames(2) == ["m1", "m2"]


@MODES
async def test_flush_sends_at_once_without_waiting_for_a_tick(direct: bool) -> None:
    async with flushing(delay=60) as flusher:
        connection = Connection(flusher, direct=direct)
        connection.offer(1)
        await connection.wait_frames(1)  # the leading edge: the next tick is a minute off
        connection.outbox.put_nowait(b"reply")
        connection.sender.flush()
        assert await connection.wait_frames(2) == ["m1", "reply"]


@MODES
async def test_a_broken_connection_ends_once(direct: bool) -> None:
    async with flushing() as flusher:
        connection = Connection(flusher, direct=direct)
        connection.break_()
        connection.offer(1)
        connection.sender.flush()
        await anyio.wait_all_tasks_blocked()
        connection.offer(2)
        connection.sender.flush()
        await anyio.wait_all_tasks_blocked()
        assert connection.done == 1


async def test_a_socket_that_breaks_while_full_ends_the_connection() -> None:
    async with flushing() as flusher:
        connection = Connection(flusher, direct=True)
        assert connection.socket is not None
        tasks = len(anyio.get_running_tasks())
        connection.socket.full = True
        connection.offer(1)
        await anyio.wait_all_tasks_blocked()
        assert len(anyio.get_running_tasks()) == tasks + 1
        connection.socket.break_()
        await anyio.wait_all_tasks_blocked()
        assert connection.done == 1
        assert len(anyio.get_running_tasks()) == tasks


@MODES
async def test_a_closed_outbox_is_sent_then_the_connection_is_done(direct: bool) -> None:
    async with flushing() as flusher:
        connection = Connection(flusher, direct=direct)
        ended = anyio.Event()
        connection.sender._on_done = ended.set
        connection.offer(1, 2)
        connection.outbox.close()
        await ended.wait()
        assert connection.frames == ["[m1,m2]"]


@MODES
async def test_an_empty_closed_outbox_is_done_at_once(direct: bool) -> None:
    async with flushing() as flusher:
        connection = Connection(flusher, direct=direct)
        connection.outbox.close()
        connection.sender.flush()
        assert connection.done == 1


@MODES
@pytest.mark.parametrize("had_sent", [False, True], ids=["idle", "after-a-send"])
async def test_closing_an_idle_connection_ends_it_at_the_next_tick(
    direct: bool, had_sent: bool
) -> None:
    # What a drain does to a connection with nothing queued (issue 4: trio drains).
    async with flushing() as flusher:
        connection = Connection(flusher, direct=direct)
        if had_sent:
            connection.offer(1)
            await connection.wait_frames(1)
        ended = anyio.Event()
        connection.sender._on_done = ended.set
        connection.outbox.close()
        await ended.wait()
        assert connection.frames == (["m1"] if had_sent else [])


@MODES
async def test_an_outbox_closed_before_its_sender_existed_still_ends(direct: bool) -> None:
    # A drain that comes while the connection is still being accepted.
    async with flushing() as flusher:
        transport = Transport()
        box = Outbox(10, 1000, TextEncoding())
        box.close()
        ended = anyio.Event()
        Sender(box, transport, flusher, ended.set, Socket(transport) if direct else None)
        await ended.wait()


@MODES
async def test_a_stopped_sender_sends_nothing_more(direct: bool) -> None:
    async with flushing() as flusher:
        connection = Connection(flusher, direct=direct)
        connection.sender.stop()
        connection.offer(1)
        connection.sender.flush()
        await anyio.wait_all_tasks_blocked()  # every task has done what it would do
        assert connection.frames == []


async def test_stopping_a_connection_that_waits_for_its_socket_ends_the_wait() -> None:
    async with flushing() as flusher:
        connection = Connection(flusher, direct=True)
        assert connection.socket is not None
        tasks = len(anyio.get_running_tasks())
        connection.socket.full = True
        connection.offer(1)
        await anyio.wait_all_tasks_blocked()
        assert len(anyio.get_running_tasks()) == tasks + 1
        connection.sender.stop()
        await anyio.wait_all_tasks_blocked()
        assert len(anyio.get_running_tasks()) == tasks
        connection.socket.drain()
        await anyio.wait_all_tasks_blocked()
        assert connection.frames == []


async def test_a_write_that_fills_the_socket_is_waited_on_with_nothing_else_queued() -> None:
    # The frame may be unfinished (trio keeps the rest): someone must wait to finish it.
    async with flushing() as flusher:
        connection = Connection(flusher, direct=True)
        assert connection.socket is not None
        tasks = len(anyio.get_running_tasks())
        connection.socket.full_after_next = True
        connection.offer(1)
        await connection.wait_frames(1)
        await anyio.wait_all_tasks_blocked()
        assert connection.socket.waits == 1
        assert len(anyio.get_running_tasks()) == tasks + 1
        connection.socket.full_after_next = False
        connection.socket.drain()
        await anyio.wait_all_tasks_blocked()
        assert len(anyio.get_running_tasks()) == tasks
        connection.offer(2)
        assert await connection.wait_frames(2) == ["m1", "m2"]


async def test_a_wire_of_one_message_per_frame_is_sent_what_waits_in_one_serve() -> None:
    frames: list[bytes] = []

    class Socket:
        def writable(self) -> bool:
            return True

        def write_nowait(self, payload: bytes) -> bool:
            frames.append(payload)
            return True

        async def wait_writable(self) -> None:
            raise AssertionError("never full")

    async def unused(data: str) -> None:
        raise AssertionError("frames go to the socket")

    class Transport:
        send_text = staticmethod(unused)

    flusher = Flusher(0.005, None, 1.0)
    box = Outbox(1000, 1000, TextEncoding(batches=False))
    sender = Sender(box, Transport(), flusher, lambda: None, Socket())
    for offset in range(1, 201):
        box.offer(Delivery("c", offset, f"m{offset}".encode()))
    sender.flush()
    # One serve, many frames: a burst does not wait a tick per message.
    assert frames == [f"m{offset}".encode() for offset in range(1, 201)]
