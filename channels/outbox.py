"""One connection's bounded queue of outgoing messages, and the slow-consumer policies."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from channels.traffic import Traffic

if TYPE_CHECKING:
    from collections.abc import Callable

    from channels.config import SlowConsumerPolicy
    from channels.control import Ending
    from channels.encoding import Encoding

__all__ = ("Delivery", "Outbox")


class Delivery:
    """One encoded message on its way out, shared by every subscriber it is offered to.

    ``channel`` is None for a reply to the connection's own request or an event.
    ``data`` is the message as *encoding* encoded it (None: a reply, already in its
    connection's wire); a subscriber of another wire gets it through `data_for`, which
    encodes it once per wire with *render*.
    """

    __slots__ = ("_other", "channel", "data", "encoding", "offset", "policy", "published", "render")

    def __init__(
        self,
        channel: str | None,
        offset: int,
        data: bytes,
        policy: SlowConsumerPolicy = "disconnect",
        published: float = 0.0,
        *,
        encoding: Encoding | None = None,
        render: Callable[[Encoding], bytes] | None = None,
    ) -> None:
        self.channel = channel
        self.offset = offset
        self.data = data
        """The encoded message (UTF-8 JSON)."""
        self.policy: SlowConsumerPolicy = policy
        self.published = published
        """When a channel message reached the hub (`time.monotonic`); 0 for the rest."""
        self.encoding = encoding
        self.render = render
        self._other: tuple[Encoding, bytes] | None = None

    def data_for(self, encoding: Encoding) -> bytes:
        """The message as *encoding* encodes it: encoded on the first call per wire."""
        if self.render is None or encoding is self.encoding:
            return self.data
        other = self._other
        if other is None or other[0] is not encoding:
            # Two wires at most in practice: the last one other than the first is kept.
            other = self._other = (encoding, self.render(encoding))
        return other[1]


class Outbox:
    """The queue between the hub (and the connection's reader) and whoever sends it.

    The hub calls `offer`, which never waits: when the queue is full the channel's
    slow-consumer policy decides what is lost. The reader calls `put` for replies, which
    waits for room instead. The connection's `Sender` takes batches with `take_batch`;
    *notify* (set by the sender) is called when messages arrive in an empty queue, and
    for every reply, gap notice and the close. (A sender that leaves messages queued
    comes back for them by itself: one call per message would cost a thousand calls per
    message on a channel of a thousand subscribers.)

    Messages a policy discarded are reported to the client by a gap notice (encoded by
    *encoding*, as is a restart notice), ahead of the channel's next message.
    *on_fail* is called once when the outbox fails, so that the connection can stop even
    while a send to it is blocked; it may be set later. What it hands out is counted in
    *traffic*, the node's (by default, nowhere).
    """

    __slots__ = (
        "_closed",
        "_encoding",
        "_failed",
        "_frame_max_bytes",
        "_gaps",
        "_queue",
        "_refusing",
        "_traffic",
        "_writable",
        "capacity",
        "dropped",
        "ending",
        "notify",
        "on_fail",
    )

    def __init__(
        self,
        capacity: int,
        frame_max_bytes: int,
        encoding: Encoding,
        on_fail: Callable[[], None] | None = None,
        *,
        traffic: Traffic | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.dropped = 0
        self.ending: Ending | None = None
        """Why `close` was called, when the server ended the connection on purpose."""
        self.notify: Callable[[], None] = _nothing
        self.on_fail = on_fail
        self._frame_max_bytes = frame_max_bytes
        self._encoding = encoding
        # A list, not a deque: an idle connection's empty list costs 56 bytes, an empty
        # deque 600; batches are cut from the front with one slice.
        self._queue: list[Delivery] = []
        # Shared and empty until a gap comes (`record_gap`): most outboxes never see one.
        self._gaps: dict[str, tuple[int, int]] = _NO_GAPS
        self._writable: anyio.Event | None = None
        self._failed = False
        self._closed = False
        self._refusing = False  # failed or closed: offers are refused
        self._traffic = _UNCOUNTED if traffic is None else traffic

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def encoding(self) -> Encoding:
        """How what this connection is sent is encoded: its wire's encoding."""
        return self._encoding

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def failed(self) -> bool:
        """Whether the outbox overflowed under ``disconnect`` and accepts nothing more."""
        return self._failed

    @property
    def pending(self) -> bool:
        """Whether there is something to send: messages, replies or gap notices."""
        return bool(self._queue or self._gaps)

    def offer(self, delivery: Delivery) -> bool:
        """Queue *delivery* without waiting. Return False if it was not queued.

        On a full queue the delivery's policy applies: ``disconnect`` fails the outbox;
        ``drop_oldest`` discards the oldest queued message of the same channel;
        ``latest`` discards every queued message of the same channel. When there is
        none to discard, the new message is the one dropped.
        """
        if self._refusing:
            return False
        queue = self._queue
        if len(queue) >= self.capacity and not self._make_room(delivery):
            return False
        queue.append(delivery)
        if len(queue) == 1:
            self.notify()
        return True

    def fail(self) -> None:
        """Give up on this connection as a slow consumer.

        What is queued is discarded; `offer` and `put` accept nothing more. A closed
        outbox is not failed: it is already sending what it holds before ending.
        """
        if not self._failed and not self._closed:
            self._failed = self._refusing = True
            self._queue.clear()
            self._gaps = _NO_GAPS
            self._wake_writable()
            if self.on_fail is not None:
                self.on_fail()

    def close(self, ending: Ending | None = None) -> None:
        """Accept nothing more; what is queued is still sent. *ending* says why (none: the
        node is shutting down)."""
        if not self._closed:
            self.ending = ending
            self._closed = self._refusing = True
            self._wake_writable()
            self.notify()

    async def put(self, data: bytes) -> None:
        """Queue a reply, waiting while the queue is full. One task at a time may wait.

        A reply to a connection that is failing or closing is discarded: the connection
        is about to be closed.
        """
        while len(self._queue) >= self.capacity and not self._failed and not self._closed:
            if self._writable is not None:
                raise RuntimeError("another task is already waiting to put a reply")
            self._writable = anyio.Event()
            await self._writable.wait()
        self.put_nowait(data)

    def put_nowait(self, data: bytes) -> None:
        """Queue a reply now, even beyond capacity (by at most one reply per request).

        Used where a reply must precede messages that are offered right after it.
        """
        if not self._failed and not self._closed:
            self._queue.append(Delivery(None, 0, data))
            self.notify()

    def record_restart(self, channel: str, epoch: str) -> None:
        """Tell the client that *channel*'s stream started again in *epoch*, from offset 1.

        Queued before anything the channel delivers afterwards; a gap still pending for
        the old stream is dropped, since its offsets mean nothing in the new one.
        """
        self._gaps.pop(channel, None)
        self.put_nowait(self._encoding.restart(channel, epoch))

    def record_gap(self, channel: str, first: int, last: int) -> None:
        """Report that offsets *first* to *last* of *channel* will not be delivered."""
        self.dropped += last - first + 1
        if self._gaps is _NO_GAPS:
            self._gaps = {}
        known = self._gaps.get(channel)
        if known is not None:
            first, last = min(first, known[0]), max(last, known[1])
        self._gaps[channel] = (first, last)
        self.notify()

    def take_frame(self) -> bytes | None:
        """Take the next batch joined into one frame's payload (None when nothing is pending).

        One object goes alone, several as one JSON array (see `take_batch`).
        """
        queue = self._queue
        if len(queue) == 1 and not self._gaps:  # the usual case under light load
            delivery = queue.pop()
            data = delivery.data
            if delivery.encoding is not self._encoding:  # a reply, or another wire's
                data = delivery.data_for(self._encoding)
            traffic = self._traffic
            traffic.frames += 1
            traffic.messages += 1
            traffic.bytes += len(data)
            if delivery.published:
                traffic.deliveries += 1
                traffic.waited(time.monotonic() - delivery.published)
            if self._writable is not None:
                self._wake_writable()
            return data
        if not self._encoding.batches:  # a message per frame (Pusher's wire)
            items = self.take_batch(1)
            return items[0] if items else None
        items = self.take_batch()
        if not items:
            return None
        return items[0] if len(items) == 1 else _joined(items)

    def take_batch(self, most: int = 0) -> list[bytes]:
        """Take the encoded messages of the next batch, oldest first (none when nothing is
        pending): at most *most* of them (0: as many as fit).

        A batch takes queued messages while the frame that joins them (``[a,b,…]``)
        stays within ``frame_max_bytes``; a single larger message goes alone. A gap
        notice goes just before its channel's first message after the gap, or at the
        end of the batch that empties the queue, so it never precedes an earlier reply.
        """
        items: list[bytes] = []
        used = 1  # the opening "[" of a coalesced frame; each item adds "," or "]"
        limit = self._frame_max_bytes
        queue = self._queue
        gaps = self._gaps
        encoding = self._encoding
        most = most or -1  # -1: as many as fit

        def add_gap(channel: str) -> bool:
            nonlocal used
            gap = encoding.gap(channel, *gaps[channel])
            if items and (used + len(gap) + 1 > limit or len(items) == most):
                return False
            del gaps[channel]
            used += len(gap) + 1
            items.append(gap)
            return True

        taken = deliveries = 0
        oldest = 0.0
        for item in queue:
            channel = item.channel
            # A notice goes just before the first message after its gap (a replay of
            # older messages may come first).
            if gaps and channel is not None and channel in gaps and item.offset > gaps[channel][1]:
                if not add_gap(channel):
                    break
            data = item.data
            if item.encoding is not encoding:  # a reply, or another wire's message
                data = item.data_for(encoding)
            size = len(data)
            if items and (used + size + 1 > limit or taken == most):
                break
            used += size + 1
            items.append(data)
            taken += 1
            if item.published:
                deliveries += 1
                oldest = oldest or item.published
        del queue[:taken]
        while gaps and not queue and add_gap(next(iter(gaps))):
            pass
        if items:
            traffic = self._traffic
            traffic.frames += 1
            traffic.messages += len(items)
            traffic.bytes += used if len(items) > 1 else len(items[0])
            if deliveries:
                traffic.deliveries += deliveries
                traffic.waited(time.monotonic() - oldest)
            self._wake_writable()
        return items

    def _make_room(self, delivery: Delivery) -> bool:
        channel = delivery.channel
        if delivery.policy == "disconnect" or channel is None:
            self.fail()
            return False
        queue = self._queue
        if delivery.policy == "drop_oldest":
            for index, queued in enumerate(queue):
                if queued.channel == channel:
                    del queue[index]
                    self.record_gap(channel, queued.offset, queued.offset)
                    return True
        else:  # latest
            dropped = [queued for queued in queue if queued.channel == channel]
            if dropped:
                queue[:] = [queued for queued in queue if queued.channel != channel]
                self.record_gap(channel, dropped[0].offset, dropped[-1].offset)
                return True
        self.record_gap(channel, delivery.offset, delivery.offset)
        return False

    def _wake_writable(self) -> None:
        if self._writable is not None:
            self._writable.set()
            self._writable = None


def _nothing() -> None:
    pass


_UNCOUNTED = Traffic()
#: The gaps of every outbox that has none: never written (`Outbox.record_gap` gives an
#: outbox a dict of its own first).
_NO_GAPS: dict[str, tuple[int, int]] = {}


# The last batch joined, and its frame's payload: subscribers of a busy channel, served
# one after the other, mostly hold the same messages, which are then joined once (and
# the same payload object lets the transport frame it once too).
_last_joined: tuple[list[bytes], bytes] = ([], b"")


def _joined(items: list[bytes]) -> bytes:
    """*items* as one JSON array."""
    global _last_joined
    last_items, payload = _last_joined
    if len(items) == len(last_items) and all(
        item is last for item, last in zip(items, last_items, strict=True)
    ):
        return payload
    payload = b"[" + b",".join(items) + b"]"
    _last_joined = (items, payload)
    return payload
