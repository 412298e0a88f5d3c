"""The HTTP API's requests, and the answers that the WebSocket protocol lacks.

A GET request's query is read as its request's fields (``?channel=news&limit=5``).
Replies are ``{"type":"reply",…}`` objects like the protocol's (`service.protocol`),
which keeps the answers the two share (``POST /api/publish``, ``GET /api/history`` and
``GET /api/presence`` answer like the ``publish``, ``history`` and ``presence`` requests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec

from channels.errors import ChannelsError
from channels.statistics import ChannelCount  # noqa: TC001 - msgspec reads Struct annotations at runtime
from service.closecodes import CloseCode
from service.protocol import Frame, IdempotencyKey
from service.serverapi import CHANNELS_PAGE

if TYPE_CHECKING:
    from channels.publication import Published

__all__ = (
    "BatchItem",
    "BatchReply",
    "BatchRequest",
    "BroadcastReply",
    "BroadcastRequest",
    "BroadcastResult",
    "ChannelsReply",
    "ChannelsRequest",
    "DisconnectRequest",
    "ErrorBody",
    "HistoryRequest",
    "PresenceRequest",
    "PresenceStatsReply",
    "PublishRequest",
    "UnsubscribeRequest",
    "broadcast_reply",
)

User = Annotated[str, msgspec.Meta(min_length=1)]
Offset = Annotated[int, msgspec.Meta(ge=0)]
Limit = Annotated[int, msgspec.Meta(ge=1)]


class _Body(
    msgspec.Struct, tag_field="method", forbid_unknown_fields=True, frozen=True, kw_only=True
):
    """Base of the API's requests: a body, or a GET request's query read as one. In a
    batch, ``method`` names the request; alone, it may be left out."""


class PublishRequest(_Body, tag="publish", frozen=True, kw_only=True):
    """``POST /api/publish``."""

    channel: str
    data: msgspec.Raw
    idempotency_key: IdempotencyKey | None = None


class BroadcastRequest(_Body, tag="broadcast", frozen=True, kw_only=True):
    """``POST /api/broadcast``."""

    channels: list[str]
    data: msgspec.Raw
    idempotency_key: IdempotencyKey | None = None


class HistoryRequest(_Body, tag="history", frozen=True, kw_only=True):
    """``GET /api/history``."""

    channel: str
    since: Offset | None = None
    limit: Limit | None = None


class PresenceRequest(_Body, tag="presence", frozen=True, kw_only=True):
    """``GET /api/presence``."""

    channel: str
    count_only: bool = False


class ChannelsRequest(_Body, tag="channels", frozen=True, kw_only=True):
    """``GET /api/channels``."""

    prefix: str = ""
    cursor: str | None = None
    limit: Limit = CHANNELS_PAGE


class DisconnectRequest(_Body, tag="disconnect", frozen=True, kw_only=True):
    """``POST /api/disconnect`` (see `service.serverapi.ServerAPI.disconnect`)."""

    user: User
    code: int = CloseCode.DISCONNECTED
    reason: str = "disconnected"
    until: float | None = None


class UnsubscribeRequest(_Body, tag="unsubscribe", frozen=True, kw_only=True):
    """``POST /api/unsubscribe``."""

    user: User
    channel: str


BatchItem = (
    PublishRequest
    | BroadcastRequest
    | HistoryRequest
    | PresenceRequest
    | ChannelsRequest
    | DisconnectRequest
    | UnsubscribeRequest
)


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``POST /api/batch``: requests of the other kinds, each with its ``method``."""

    requests: list[BatchItem]


class BatchReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The answer to ``POST /api/batch``: each request's answer (a reply or an error, as
    alone), in order."""

    replies: list[msgspec.Raw]


class ErrorBody(msgspec.Struct, frozen=True):
    """Why one channel of a broadcast was refused: the error's ``code`` and ``message``."""

    code: int
    message: str


class BroadcastResult(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One channel's result: its ``offset`` and ``epoch``, or its ``error``."""

    channel: str
    offset: int | None = None
    epoch: str | None = None
    duplicate: bool = False
    error: ErrorBody | None = None


class BroadcastReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The answer to ``POST /api/broadcast``: one result per channel, in order."""

    results: list[BroadcastResult]


class ChannelsReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The answer to ``GET /api/channels``: a page, and the cursor of the next (None at
    the end)."""

    channels: list[ChannelCount]
    cursor: str | None


class PresenceStatsReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The answer to ``GET /api/presence?count_only=1``."""

    channel: str
    client_count: int
    user_count: int
    """Distinct users; connections without a user count as none."""


def broadcast_reply(
    channels: list[str], results: list[Published | ChannelsError]
) -> BroadcastReply:
    """The answer to a broadcast to *channels* that had these *results*."""
    return BroadcastReply(
        results=[
            BroadcastResult(channel=channel, error=ErrorBody(result.code, str(result)))
            if isinstance(result, ChannelsError)
            else BroadcastResult(
                channel=channel,
                offset=result.position.offset,
                epoch=result.position.epoch,
                duplicate=result.duplicate,
            )
            for channel, result in zip(channels, results, strict=True)
        ]
    )
