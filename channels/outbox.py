"""One connection's bounded queue of outgoing messages, and the slow-consumer policies."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import anyio

from channels.errors import SlowConsumer

if TYPE_CHECKING:
    from collections.abc import Callable

    from channels.config import SlowConsumerPolicy

__all__ = ("Delivery", "Outbox")


class Delivery:
    """One encoded message on its way out, shared by every subscriber it is offered to.

    ``channel`` is None for a reply to the connection's own request.
    """

    __slots__ = ("channel", "offset", "policy", "size", "text")

    def __init__(
        self,
        channel: str | None,
        offset: int,
        text: str,
        size: int,
        policy: SlowConsumerPolicy = "disconnect",
    ) -> None:
        self.channel = channel
        self.offset = offset
        self.text = text
        self.size = size
        self.policy: SlowConsumerPolicy = policy


class Outbox:
    """The queue between the hub (and the connection's reader) and the connection's writer.

    The hub calls `offer`, which never waits: when the queue is full the channel's
    slow-consumer policy decides what is lost. The reader calls `put` for replies, which
    waits for room instead. One writer task calls `get_batch`.

    Messages a policy discarded are reported to the client by a gap notice, built by
    *encode_gap(channel, first_offset, last_offset)*, at the head of the next batch.
    *on_fail* is called once when the outbox fails, so that the connection can stop even
    while its writer is blocked in a send.
    """

    def __init__(
        self,
        capacity: int,
        frame_max_bytes: int,
        encode_gap: Callable[[str, int, int], str],
        on_fail: Callable[[], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._on_fail = on_fail
        self.dropped = 0
        self._frame_max_bytes = frame_max_bytes
        self._encode_gap = encode_gap
        self._queue: deque[Delivery] = deque()
        self._gaps: dict[str, tuple[int, int]] = {}
        self._readable: anyio.Event | None = None
        self._writable: anyio.Event | None = None
        self._failure: SlowConsumer | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def failed(self) -> bool:
        """Whether the outbox overflowed under ``disconnect`` and accepts nothing more."""
        return self._failure is not None

    def offer(self, delivery: Delivery) -> bool:
        """Queue *delivery* without waiting. Return False if it was not queued.

        On a full queue the delivery's policy applies: ``disconnect`` fails the outbox
        (`get_batch` raises `SlowConsumer`); ``drop_oldest`` discards the oldest queued
        message of the same channel; ``latest`` discards every queued message of the same
        channel. When there is none to discard, the new message is the one dropped.
        """
        if self._failure is not None or self._closed:
            return False
        queue = self._queue
        if len(queue) >= self.capacity and not self._make_room(delivery):
            return False
        queue.append(delivery)
        if self._readable is not None:
            self._readable.set()
        return True

    def fail(self, channel: str) -> None:
        """Give up on this connection as a slow consumer of *channel*.

        What is queued is discarded; `offer` and `put` accept nothing more.
        """
        if self._failure is None:
            self._failure = SlowConsumer(channel, self.capacity)
            self._queue.clear()
            self._gaps.clear()
            self._wake_all()
            if self._on_fail is not None:
                self._on_fail()

    def close(self) -> None:
        """Accept nothing more; `get_batch` returns what is queued, then ends."""
        self._closed = True
        self._wake_all()

    async def put(self, text: str) -> None:
        """Queue a reply, waiting while the queue is full.

        A reply to a connection that is failing or closing is discarded: the connection
        is about to be closed.
        """
        while len(self._queue) >= self.capacity and self._failure is None and not self._closed:
            self._writable = anyio.Event()
            await self._writable.wait()
        self.put_nowait(text)

    def put_nowait(self, text: str) -> None:
        """Queue a reply now, even beyond capacity (by at most one reply per request).

        Used where a reply must precede messages that are offered right after it.
        """
        if self._failure is None and not self._closed:
            self._queue.append(Delivery(None, 0, text, len(text)))
            if self._readable is not None:
                self._readable.set()

    async def get_batch(self) -> list[str]:
        """Wait for queued messages and return the texts of a batch of them, oldest first.

        A batch holds every queued message up to ``frame_max_bytes`` in all (at least
        one), preceded by any gap notices.

        Raises:
            SlowConsumer: once the outbox overflowed under the ``disconnect`` policy.
            anyio.EndOfStream: when the outbox is closed and everything was taken.
        """
        queue = self._queue
        while not queue and not self._gaps:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise anyio.EndOfStream
            self._readable = anyio.Event()
            await self._readable.wait()
            self._readable = None
        texts = [self._encode_gap(channel, *gap) for channel, gap in self._gaps.items()]
        self._gaps.clear()
        budget = self._frame_max_bytes
        while queue:
            size = queue[0].size
            if texts and size > budget:
                break
            budget -= size
            texts.append(queue.popleft().text)
        if self._writable is not None:
            self._writable.set()
            self._writable = None
        return texts

    def _make_room(self, delivery: Delivery) -> bool:
        channel = delivery.channel
        if delivery.policy == "disconnect" or channel is None:
            self.fail(channel or "")
            return False
        queue = self._queue
        if delivery.policy == "drop_oldest":
            for index, queued in enumerate(queue):
                if queued.channel == channel:
                    del queue[index]
                    self._record_gap(channel, queued.offset, queued.offset, 1)
                    return True
        else:  # latest
            dropped = [queued for queued in queue if queued.channel == channel]
            if dropped:
                kept = [queued for queued in queue if queued.channel != channel]
                queue.clear()
                queue.extend(kept)
                self._record_gap(channel, dropped[0].offset, dropped[-1].offset, len(dropped))
                return True
        self._record_gap(channel, delivery.offset, delivery.offset, 1)
        return False

    def _record_gap(self, channel: str, first: int, last: int, count: int) -> None:
        self.dropped += count
        known = self._gaps.get(channel)
        if known is not None:
            first, last = min(first, known[0]), max(last, known[1])
        self._gaps[channel] = (first, last)
        if self._readable is not None:
            self._readable.set()

    def _wake_all(self) -> None:
        for event in (self._readable, self._writable):
            if event is not None:
                event.set()
