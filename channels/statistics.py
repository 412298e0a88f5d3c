"""What a hub reports about itself and its channels (`Hub.statistics`,
`Hub.channel_statistics`, `Hub.channels`), for the stats API, the channels API and the
metrics."""

from __future__ import annotations

import msgspec

__all__ = ("ChannelCount", "ChannelStatistics", "ChannelsPage", "HubStatistics")


class HubStatistics(msgspec.Struct, frozen=True):
    """Counters of one hub, as returned by `Hub.statistics`."""

    connections: int
    channels: int
    subscriptions: int
    published: int
    """Publications the broker handed to this hub, from any node: with the memory broker
    every one; with Redis, those of channels with a subscriber on this node."""
    accepted: int
    """Publications this node accepted from its clients and its HTTP API."""
    dropped: int
    """Messages the ``drop_oldest`` and ``latest`` policies discarded."""
    slow_consumers: int
    """Connections given up on under the ``disconnect`` policy."""
    broker_ready: bool
    """Whether the broker can take publications now."""
    broker_round_trip_seconds: float | None
    """How long the broker's last check took there and back (None for the memory broker)."""


class ChannelStatistics(msgspec.Struct, frozen=True):
    """One channel of this node, as returned by `Hub.channel_statistics`."""

    channel: str
    subscribers: int
    """Local subscribers (and subscribers still joining)."""
    messages: int
    """Publications delivered here since the channel started on this node."""


class ChannelCount(msgspec.Struct, frozen=True):
    """A channel with subscribers somewhere in the cluster, and how many."""

    channel: str
    subscribers: int


class ChannelsPage(msgspec.Struct, frozen=True):
    """A page of `Hub.channels`: ``cursor`` continues the list, None at its end."""

    channels: list[ChannelCount]
    cursor: str | None
