"""What a broker stores and returns for a channel: publications and stream positions."""

from __future__ import annotations

import msgspec

__all__ = ("ClientInfo", "HistoryPage", "Position", "Publication", "Published")


class Position(msgspec.Struct, frozen=True, gc=False):
    """A place in a channel's stream: the offset of its last message, in one epoch.

    Offsets count up by one per message from 1. The epoch names one life of the stream:
    when a stream is lost (broker restart, channel forgotten) it starts again at offset 1
    with a new epoch, so an offset is only meaningful with its epoch.
    """

    offset: int
    epoch: str


class Published(msgspec.Struct, frozen=True, gc=False):
    """The outcome of a publish: where its message is in the stream.

    ``duplicate`` is True when the publish carried an idempotency key already seen on
    its channel within the window: nothing was published again, and ``position`` is
    where the first publish with that key put its message.
    """

    position: Position
    duplicate: bool = False


class Publication(msgspec.Struct, frozen=True, gc=False):
    """One message published on a channel. ``data`` is already-encoded JSON."""

    channel: str
    offset: int
    data: msgspec.Raw


class HistoryPage(msgspec.Struct, frozen=True):
    """Publications read from a channel's history.

    Attributes:
        position: the stream's position when it was read.
        publications: the messages found, oldest first.
        complete: False when the range asked for could not be read in full: its epoch is
            not the stream's, or messages in it were trimmed or expired.
    """

    position: Position
    publications: list[Publication]
    complete: bool


class ClientInfo(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """Who is subscribed, as presence and join/leave events show it.

    ``client`` identifies one connection (unique per node and connection); ``user`` is
    the authenticated user, None while connections are anonymous (always encoded);
    ``info`` is what the application says of the user on one channel (a Pusher presence
    channel's ``user_info``), as JSON text; left out when there is none.
    """

    client: str
    user: str | None
    info: str | None = None
