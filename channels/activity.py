"""What happened in the hub that an application may want to hear of (webhooks).

Each is reported once in the cluster, by the node where it happened: a client's
presence and publishes by the node it is connected to; a channel's occupancy (its first
subscriber in the cluster, its last leaving) by the node whose change decided it, which
the broker finds out (`channels.brokers.Receiver.occupancy`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeAlias

import msgspec

from channels.publication import ClientInfo  # noqa: TC001 - msgspec reads Struct annotations at runtime

__all__ = ("Activity", "ActivityName", "Observer")

ActivityName: TypeAlias = Literal[
    "channel_occupied",
    "channel_vacated",
    "member_joined",
    "member_left",
    "client_published",
    "connection_refused",
    "cache_miss",
]


class Activity(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One thing that happened: its ``name``, the ``channel`` (when there is one), the
    ``client`` (who joined, left or published), the published ``data``, and for a
    refused connection its error ``code`` and ``message``."""

    name: ActivityName
    channel: str | None = None
    client: ClientInfo | None = None
    data: msgspec.Raw | None = None
    code: int | None = None
    message: str | None = None


Observer: TypeAlias = Callable[[Activity], None]
"""Hears of each `Activity`; must not block (webhooks queue it)."""
