"""One node's state of a channel: its subscribers, those still joining, and where its
deliveries stand. The hub keeps one `LocalChannel` per channel with subscribers here."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from channels.config import SlowConsumerPolicy
    from channels.outbox import Delivery, Outbox
    from channels.publication import ClientInfo

__all__ = ("Joining", "LocalChannel")


class Joining:
    """Live deliveries held for a subscriber that is still reading where it starts.

    Bounded by the outbox's capacity, with the channel's policy applied on overflow;
    the offsets it had to drop are reported once the subscriber is live.
    """

    __slots__ = ("deliveries", "dropped")

    def __init__(self) -> None:
        self.deliveries: deque[Delivery] = deque()
        self.dropped: tuple[int, int] | None = None

    def hold(self, delivery: Delivery, outbox: Outbox) -> None:
        held = self.deliveries
        if len(held) >= outbox.capacity:
            if delivery.policy == "disconnect":
                outbox.fail()
                return
            # Everything held is of this one channel: drop its oldest, or all for latest.
            first = held[0].offset
            last = held.popleft().offset if delivery.policy == "drop_oldest" else held[-1].offset
            if delivery.policy == "latest":
                held.clear()
            if self.dropped is not None:
                first = self.dropped[0]
            self.dropped = (first, last)
        held.append(delivery)

    def lose(self, first: int, last: int) -> None:
        """Record that offsets *first* to *last* will never be delivered."""
        if self.dropped is not None:
            first, last = min(first, self.dropped[0]), max(last, self.dropped[1])
        self.dropped = (first, last)


class LocalChannel:
    """The local state of one channel that has subscribers, or is about to."""

    __slots__ = (
        "by_user",
        "join_leave",
        "joining",
        "last_offset",
        "members",
        "messages",
        "policy",
        "presence",
        "skip_until",
        "subscribers",
    )

    def __init__(
        self,
        policy: SlowConsumerPolicy,
        *,
        presence: bool,
        join_leave: bool,
        by_user: bool = False,
    ) -> None:
        self.policy: SlowConsumerPolicy = policy
        self.presence = presence
        self.join_leave = join_leave
        self.by_user = by_user
        """Whether its members are users, not connections: a user's first connection
        joins, its last leaves (a Pusher presence channel)."""
        self.subscribers: dict[Outbox, None] = {}
        self.last_offset = 0
        """The offset of the last publication delivered here."""
        self.messages = 0
        """Publications delivered here since the channel started on this node."""
        # Subscribers that started at a position the broker has not delivered here yet
        # (a message still on its way from Redis): publications up to their start
        # were replayed to them, or came before it, and must not reach them again.
        self.skip_until: dict[Outbox, int] = {}
        # Subscribers still reading their starting position or missed messages: live
        # publications wait here so that none is lost or sent twice.
        self.joining: dict[Outbox, Joining] = {}
        # Who a subscriber is in this channel's presence and events, where it is not
        # who its connection is (see `Hub.subscribe`'s member).
        self.members: dict[Outbox, ClientInfo] = {}
