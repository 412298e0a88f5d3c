"""How the engine's messages become what a connection is sent: one wire's encoding.

The engine calls it; it knows nothing of the wire. A publication is encoded once,
whatever the number of its subscribers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from channels.brokers import Event
    from channels.errors import ChannelsError
    from channels.publication import ClientInfo, Publication

__all__ = ("Encoding",)


class Encoding(Protocol):
    """Everything the engine sends a connection, encoded for its wire.

    Connections of several wires may share a channel (Clarion's protocol and Pusher's):
    each connection has its wire's encoding, and a publication is encoded once per wire
    that has a subscriber to it, however many subscribers.
    """

    batches: bool
    """Whether several messages may go out in one frame, as one JSON array (Clarion's
    protocol); otherwise each goes in a frame of its own."""

    def message(self, publication: Publication) -> bytes:
        """Encode a publication; called once per publication, whatever the subscribers."""
        ...

    def event(self, channel: str, event: Event, client: ClientInfo) -> bytes:
        """Encode a ``join`` or ``leave`` event of *client* on *channel*."""
        ...

    def ended(self, channel: str, error: ChannelsError) -> bytes:
        """Encode the notice that the subscription to *channel* ended with *error*."""
        ...

    def gap(self, channel: str, first: int, last: int) -> bytes:
        """Encode the notice that offsets *first* to *last* of *channel* will not come."""
        ...

    def restart(self, channel: str, epoch: str) -> bytes:
        """Encode the notice that *channel* started again at offset 1 of *epoch*."""
        ...
