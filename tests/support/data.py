"""Small conversions the engine's and the client's tests share."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from service.client import Subscription
    from service.client.events import SubscriptionEvent

__all__ = ("raw", "take")


def raw(value: object) -> msgspec.Raw:
    """*value* as the engine holds a message's data: JSON, kept raw."""
    return msgspec.Raw(msgspec.json.encode(value))


async def take(subscription: Subscription, count: int) -> list[SubscriptionEvent]:
    """The next *count* events of a client *subscription*."""
    return [await subscription.receive() for _ in range(count)]
