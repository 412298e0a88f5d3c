"""One subscription of the Python client: its bounded event stream and its place in
the channel's stream.

The consumer iterates a `Subscription`; the client (`service.client`) feeds it from its
reader through the underscored methods, which never wait: events go into a bounded
memory stream with ``send_nowait``, and a full one ends the subscription
(`SlowSubscriber`). The subscription also remembers the last position received, which
is the ``since`` of its resubscription after a reconnect, and drops any message at or
before it, so that each message is delivered once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec

from channels.publication import Position
from service.client.errors import ClarionError, clone_error
from service.client.events import Message, NotRecovered, Restart, SubscriptionEvent
from service.protocol import Since, Subscribe

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.client.events import MessageFrame, ReplyFrame
    from service.client.websocket import ClientWebSocket

__all__ = ("Subscription",)

_encoder = msgspec.json.Encoder()


class Subscription:
    """One channel's `SubscriptionEvent` stream, in order: ``async for event in sub``.

    Yielded by `Client.subscribe`. Its buffer holds ``buffer_events`` events; when the
    consumer falls that far behind, the subscription ends with `SlowSubscriber`.
    The stream ends quietly when the client is closed, and raises the client's error
    when the client gives up.
    """

    def __init__(
        self,
        channel: str,
        *,
        since: Position | None,
        token: str | None,
        buffer_events: int,
        on_overflow: Callable[[Subscription], None],
    ) -> None:
        self.channel = channel
        self.buffer_events = buffer_events
        self._token = token
        self._on_overflow = on_overflow
        self._send, self._receive = anyio.create_memory_object_stream[SubscriptionEvent](
            buffer_events
        )
        self._seen = since
        """The last position received: the ``since`` of a resubscription."""
        self.started: Position | None = None
        """Where the channel stood when the subscription was first answered (its
        stream's offset and epoch then), whatever ``since`` asked to replay from."""
        self._position = since
        self._active = False
        """Replied to on the current connection: its messages are this subscription's."""
        self._sent_on: ClientWebSocket | None = None
        self._ready = anyio.Event()
        """Set at the first reply, or when it ended before."""
        self._replied = False
        self._error: ClarionError | None = None
        self._ended = False

    @property
    def position(self) -> Position | None:
        """The position of the last event received from this stream (at first, where
        the subscription started): ``subscribe(channel, since=sub.position)`` resumes
        right after it."""
        return self._position

    async def receive(self) -> SubscriptionEvent:
        """Return the next event, waiting for it.

        Raises:
            anyio.EndOfStream: when the client was closed.
            SubscriptionEnded: when the subscription ended (`SlowSubscriber` when its
                buffer overflowed), after the events received before.
            ClarionError: the client's error, when it gave up reconnecting.
            anyio.ClosedResourceError: after the ``subscribe`` block.
        """
        try:
            event = await self._receive.receive()
        except anyio.EndOfStream:
            if self._error is not None:
                raise clone_error(self._error) from None
            raise
        match event:
            case Message(offset=offset, epoch=epoch):
                self._position = Position(offset, epoch)
            case Restart(epoch=epoch):
                self._position = Position(0, epoch)
            case NotRecovered(position=position):
                self._position = position
        return event

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> SubscriptionEvent:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    # The client's side ----------------------------------------------------------------

    def _subscribe_request(self, request_id: int) -> str:
        seen = self._seen
        since = None if seen is None else Since(seen.offset, seen.epoch)
        request = Subscribe(id=request_id, channel=self.channel, since=since, token=self._token)
        return _encoder.encode(request).decode()

    def _on_subscribed(self, reply: ReplyFrame, since: Position | None) -> None:
        """Take the subscribe reply: where the channel's messages start (after *since*
        when it was recovered, else after the reply's position)."""
        position = Position(reply.offset or 0, reply.epoch or "")
        if not self._replied:
            self.started = position
            if since is None:
                self._position = position
        self._active = self._replied = True
        self._ready.set()
        if since is None:
            self._seen = position
        elif reply.recovered is False:
            self._seen = position
            self._offer(NotRecovered(self.channel, since, position))  # last: it may end us

    def _on_message(self, frame: MessageFrame) -> bool:
        """Offer *frame*; return False for a duplicate (an offset received already)."""
        seen = self._seen
        if seen is None or frame.offset <= seen.offset:
            return False
        self._seen = Position(frame.offset, seen.epoch)
        self._offer(Message(self.channel, frame.offset, seen.epoch, frame.data))
        return True

    def _on_restart(self, epoch: str) -> None:
        self._seen = Position(0, epoch)
        self._offer(Restart(self.channel, epoch))

    def _offer(self, event: SubscriptionEvent) -> None:
        if self._ended:
            return
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            self._on_overflow(self)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the subscribe block is ending

    def _end(self, error: ClarionError | None) -> None:
        """End the stream after what it holds: with *error*, or quietly (None)."""
        if self._ended:
            return
        self._ended = True
        self._active = False
        self._error = error
        self._send.close()
        self._ready.set()
