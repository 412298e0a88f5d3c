"""One channel's messages in offset order on this node, without I/O.

Redis pub/sub delivers at most once, and a node starts listening to a channel before it
knows where the channel's stream is. `ChannelOrder` decides, for each pub/sub message,
whether it is delivered, held, dropped as already delivered, or shows a gap or a new
stream; for a gap, which offsets to read from the stream and what to report lost; and,
at each readiness check, whether the stream went further than what arrived. The Redis
broker (`channels.brokers.redis`) does the reading and the delivering.

A pub/sub message reads ``EPOCH:OFFSET:DATA``.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from channels.publication import Publication

__all__ = ("ChannelOrder", "Check", "Lost", "Step", "parse_message")


class Step(NamedTuple):
    """What to do with one pub/sub message."""

    restarted: bytes | None = None
    """The new epoch, when the message is the first sign that the stream restarted."""
    deliver: tuple[int, bytes] | None = None
    """The offset and data to deliver now."""
    repair: bool = False
    """A gap before this message: read the missing ones (`ChannelOrder.repair_range`)."""


class Lost(NamedTuple):
    """Offsets *first* to *last* will never be delivered: the stream no longer keeps them."""

    first: int
    last: int


class Check(Enum):
    """What a readiness check's look at the stream's top calls for."""

    NOTHING = "nothing"
    RESTARTED = "restarted"
    """The stream restarted with no message to show it: announce the new epoch."""
    REPAIR = "repair"
    """Messages published before the previous check never arrived: read them."""


def parse_message(message: bytes) -> tuple[bytes, int, bytes]:
    """Split a pub/sub message into its epoch, offset and data.

    Raises:
        ValueError: if the offset is not a number.
    """
    epoch, _, rest = message.partition(b":")
    offset, _, data = rest.partition(b":")
    return epoch, int(offset), data


class ChannelOrder:
    """The order of one channel's messages on this node."""

    __slots__ = ("_repair_until", "checked_top", "epoch", "held", "last", "repair_to", "wanted")

    def __init__(self) -> None:
        self.epoch = b""
        self.last = 0
        """The offset of the last publication delivered."""
        self.wanted = True
        """False once the last local subscriber left; the node then unsubscribes."""
        self.held: list[bytes] | None = []
        """Messages received while the start is read or missing ones are fetched."""
        self.repair_to = 0
        """With nothing held, the offset a repair reads up to (the stream's top)."""
        self.checked_top = 0
        """The stream's top at the previous check."""
        self._repair_until = 0
        """The offset a repair under way reads up to, as `repair_range` gave it."""

    def start(self, epoch: bytes, last: int) -> list[bytes]:
        """Begin at offset *last* of stream *epoch*; return the messages held until now,
        to be received again in order."""
        self.epoch, self.last = epoch, last
        held, self.held = self.held or [], None
        return held

    def receive(self, message: bytes) -> Step:
        """Decide what to do with one pub/sub message (see `Step`).

        Raises:
            ValueError: for a message that is not ``EPOCH:OFFSET:DATA``.
        """
        if self.held is not None:
            parse_message(message)  # a malformed one is refused now, not when released
            self.held.append(message)
            return Step()
        epoch, offset, data = parse_message(message)
        restarted = None
        if epoch != self.epoch:
            restarted = epoch
            self.restart(epoch)
        if offset <= self.last:
            return Step(restarted)  # already delivered, from the stream
        if offset > self.last + 1:
            self.held = [message]
            return Step(restarted, repair=True)
        self.last = offset
        return Step(restarted, deliver=(offset, data))

    def restart(self, epoch: bytes) -> None:
        """Follow the channel into a new stream, whose offsets start again at 1."""
        self.epoch, self.last, self.checked_top = epoch, 0, 0

    def repair_range(self) -> tuple[int, int] | None:
        """The offsets a repair reads, after ``last`` and before the first held message
        (as ``after`` and ``limit``); None when no repair is due."""
        if self.held is None:
            return None
        first_held = self._repair_until = self.first_held()
        return self.last, first_held - (self.last + 1)

    def first_held(self) -> int:
        """The offset of the first message held (or the one after ``repair_to``)."""
        if self.held:
            return parse_message(self.held[0])[1]
        return self.repair_to + 1

    def repaired(
        self, epoch: bytes, publications: list[Publication]
    ) -> tuple[list[Publication | Lost], list[bytes]]:
        """Close the gap `repair_range` gave with what the stream of *epoch* still keeps.

        Returns what to hand the hub, in order (publications, and the offsets lost), and
        the held messages, to be received again. Only the range `repair_range` gave is
        decided: a message held since (a later gap) is received again and shows its own.
        """
        first_held = self._repair_until
        expected = self.last + 1
        if epoch != self.epoch:
            publications = []  # the stream restarted: what was missed is gone
        found: list[Publication | Lost] = []
        for publication in publications:
            if publication.offset >= first_held:
                break
            if publication.offset > expected:
                found.append(Lost(expected, publication.offset - 1))
            found.append(publication)
            expected = publication.offset + 1
        if expected < first_held:
            found.append(Lost(expected, first_held - 1))
        self.last = first_held - 1
        held, self.held = self.held or [], None
        return found, held

    def check(self, epoch: bytes, top: int) -> Check:
        """Compare with the stream's *epoch* and *top* at a readiness check.

        This finds what pub/sub lost when no later message came to show the gap (the
        connection broke after the channel's last publish). Messages published just
        before this check may still be on their way: only what was published at the
        previous check must have arrived.
        """
        if self.held is not None:
            return Check.NOTHING
        if epoch != self.epoch:
            self.restart(epoch)
            self.checked_top = top  # the next check reads what is still missing
            return Check.RESTARTED
        verdict = Check.NOTHING
        if self.checked_top > self.last:
            self.held, self.repair_to = [], self.checked_top
            verdict = Check.REPAIR
        self.checked_top = top
        return verdict
