"""The bodies of the HTTP API's requests and answers that the WebSocket protocol lacks.

Replies are ``{"type":"reply",…}`` objects like the protocol's (`service.protocol`),
which keeps the bodies the two share (``POST /api/publish`` and ``GET /api/presence``
answer like the ``publish`` and ``presence`` requests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import msgspec

from channels.errors import ChannelsError
from channels.statistics import ChannelCount  # noqa: TC001 - msgspec reads Struct annotations at runtime
from service.closecodes import CloseCode
from service.protocol import Frame, IdempotencyKey

if TYPE_CHECKING:
    from channels.publication import Published

__all__ = (
    "BroadcastReply",
    "BroadcastRequest",
    "BroadcastResult",
    "ChannelsReply",
    "DisconnectRequest",
    "ErrorBody",
    "PresenceStatsReply",
    "UnsubscribeRequest",
    "broadcast_reply",
)

User = Annotated[str, msgspec.Meta(min_length=1)]


class BroadcastRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The body of ``POST /api/broadcast``."""

    channels: list[str]
    data: msgspec.Raw
    idempotency_key: IdempotencyKey | None = None


class DisconnectRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The body of ``POST /api/disconnect`` (see `service.serverapi.ServerAPI.disconnect`)."""

    user: User
    code: int = CloseCode.DISCONNECTED
    reason: str = "disconnected"
    until: float | None = None


class UnsubscribeRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """The body of ``POST /api/unsubscribe``."""

    user: User
    channel: str


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
