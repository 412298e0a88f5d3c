"""What the Python client receives: subscription events, results, and server frames.

A subscription's stream yields `SubscriptionEvent` items: a `Message`, or one of the
notices that tell its consumer the stream is not simply continuous (`Gap`, `Restart`,
`NotRecovered`) or who comes and goes (`Join`, `Leave`). `decode_frames` turns one
WebSocket message from the server (one JSON object, or an array of them when the server
coalesced) into typed frames, skipping object types this client does not know.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

import msgspec

from channels.publication import ClientInfo, Position
from service.protocol import (
    Error,
    Gap as GapFrame,
    Join as JoinFrame,
    Leave as LeaveFrame,
    Restart as RestartFrame,
    ServerPing,
    Unsubscribed,
)

__all__ = (
    "ClientStatistics",
    "Gap",
    "HistoryPage",
    "Join",
    "Leave",
    "Message",
    "MessageFrame",
    "NotRecovered",
    "ReplyFrame",
    "Restart",
    "ServerFrame",
    "SubscriptionEvent",
    "decode_frames",
)

logger = logging.getLogger(__name__)


# What a subscriber receives ---------------------------------------------------------------


class Message(msgspec.Struct, frozen=True):
    """A message published on a channel: ``data`` is its JSON value, decoded.

    ``offset`` counts the channel's messages from 1 within ``epoch`` (one life of its
    stream); ``Position(offset, epoch)`` is what ``subscribe(..., since=...)`` takes.
    """

    channel: str
    offset: int
    epoch: str
    data: Any

    @property
    def position(self) -> Position:
        """Where this message is in its channel's stream."""
        return Position(self.offset, self.epoch)


class Gap(msgspec.Struct, frozen=True):
    """Messages ``first`` to ``last`` of the channel's current epoch will not come: the
    channel's slow-consumer policy (``drop_oldest``, ``latest``) dropped them for this
    connection, or its node missed them while Redis was unreachable."""

    channel: str
    first: int
    last: int


class Restart(msgspec.Struct, frozen=True):
    """The channel's stream started again in ``epoch`` (Redis lost it): the messages
    that follow count from offset 1, and what was published on the old stream after
    the last message received may be lost. Reload the channel's state another way."""

    channel: str
    epoch: str


class NotRecovered(msgspec.Struct, frozen=True):
    """A subscription with a ``since`` (the caller's, or the client's own after a
    reconnect) could not be replayed: the messages after ``since`` up to ``position``
    are lost (the epoch changed, they are no longer kept, or too many were missed).
    Live messages after ``position`` follow. Reload the channel's state another way."""

    channel: str
    since: Position
    position: Position


class Join(msgspec.Struct, frozen=True):
    """A client subscribed to the channel (its rule has ``join_leave: true``)."""

    channel: str
    info: ClientInfo


class Leave(msgspec.Struct, frozen=True):
    """A client unsubscribed from the channel, or disconnected."""

    channel: str
    info: ClientInfo


SubscriptionEvent: TypeAlias = Message | Gap | Restart | NotRecovered | Join | Leave
"""One item of a subscription's stream."""


class HistoryPage(msgspec.Struct, frozen=True):
    """Messages a channel keeps, oldest first, and the channel's position when read."""

    channel: str
    position: Position
    messages: list[Message]


class ClientStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a `service.client.Client` (its ``statistics()``)."""

    connected: bool
    """A WebSocket is open now."""
    connections: int
    """WebSockets opened: the first, then one per reconnect."""
    failed_attempts: int
    """Reconnect attempts that failed (refused, or no connection)."""
    subscriptions: int
    """Subscriptions held now."""
    frames_received: int
    """WebSocket messages received (one may hold several coalesced objects)."""
    messages_received: int
    """Channel messages received, duplicates included."""
    duplicates_dropped: int
    """Messages dropped because their offset had been received already."""
    pongs_sent: int
    """Answers to the server's ``ping``."""


# Server frames ----------------------------------------------------------------------------


class _HistoryEntry(msgspec.Struct, frozen=True):
    offset: int
    data: Any


class ReplyFrame(msgspec.Struct, tag_field="type", tag="reply", frozen=True, kw_only=True):
    """Any ``reply``: which fields it has depends on the request it answers."""

    id: int | str | None = None
    channel: str | None = None
    offset: int | None = None
    epoch: str | None = None
    recovered: bool | None = None
    messages: list[_HistoryEntry] | None = None
    clients: list[ClientInfo] | None = None


class MessageFrame(msgspec.Struct, tag_field="type", tag="message", frozen=True):
    """A ``message``, with its data decoded (the server's `service.protocol.Message`
    keeps it raw)."""

    channel: str
    offset: int
    data: Any


ServerFrame: TypeAlias = (
    ReplyFrame
    | Error
    | MessageFrame
    | GapFrame
    | RestartFrame
    | Unsubscribed
    | JoinFrame
    | LeaveFrame
    | ServerPing
)
"""An object the server sends; `decode_frames` returns these."""

_frames_decoder: msgspec.json.Decoder[list[ServerFrame] | ServerFrame] = msgspec.json.Decoder(
    list[ServerFrame] | ServerFrame
)
_frame_decoder: msgspec.json.Decoder[ServerFrame] = msgspec.json.Decoder(ServerFrame)
_raw_decoder = msgspec.json.Decoder(list[msgspec.Raw] | msgspec.Raw)


def decode_frames(text: str | bytes) -> list[ServerFrame]:
    """Decode one WebSocket message from the server into its frames, in order.

    An object of a type this client does not know (a newer server), or one that is
    malformed, is logged and skipped; so is a message that is not JSON at all.
    """
    try:
        decoded = _frames_decoder.decode(text)
    except msgspec.DecodeError:
        pass  # a ValidationError too: decode object by object, below
    else:
        return decoded if isinstance(decoded, list) else [decoded]
    try:
        raw = _raw_decoder.decode(text)
    except msgspec.DecodeError as exc:
        logger.warning("ignoring a server frame that is not JSON: %s", exc)
        return []
    frames: list[ServerFrame] = []
    for item in raw if isinstance(raw, list) else [raw]:
        try:
            frames.append(_frame_decoder.decode(item))
        except msgspec.DecodeError as exc:
            logger.debug("ignoring a server object: %s: %s", exc, bytes(item)[:200])
    return frames
