"""What an application tells every node about its users: disconnect one, end one's
subscription, keep one out for a while.

The server API (`Hub.disconnect_user`, `Hub.unsubscribe_user`) hands a `Command` to the
broker, which delivers it to every node's hub, the sender's included (the memory broker
at once, Redis through a pub/sub channel of its own). A ban (a disconnect with
``until``) is also kept by the broker, so that a node that starts, or comes back after
losing Redis, learns it; each hub holds the bans in force in `Bans`.
"""

from __future__ import annotations

import time

import msgspec

__all__ = ("Bans", "Command", "Disconnect", "Ending", "Unsubscribe")


class Ending(msgspec.Struct, frozen=True):
    """Why the server ended a connection: the close ``code`` and ``reason`` it sends."""

    code: int
    reason: str


class Disconnect(msgspec.Struct, tag="disconnect", frozen=True, kw_only=True):
    """Close every connection of *user* with *code* and *reason*; with *until* (a Unix
    time in seconds), refuse the user's new connections until then."""

    user: str
    code: int
    reason: str
    until: float | None = None


class Unsubscribe(msgspec.Struct, tag="unsubscribe", frozen=True, kw_only=True):
    """End every subscription of *user* to *channel*."""

    user: str
    channel: str


Command = Disconnect | Unsubscribe


class Bans:
    """The users kept out, each by the `Disconnect` that banned them until its ``until``;
    a later one replaces it (one whose ``until`` has passed lifts it), and expired bans
    are forgotten."""

    __slots__ = ("_bans",)

    def __init__(self) -> None:
        self._bans: dict[str, Disconnect] = {}

    def __len__(self) -> int:
        return len(self._bans)

    def apply(self, ban: Disconnect) -> None:
        """Keep *ban*'s user out until its ``until``, instead of any earlier ban; forget
        the bans that are over (bans are rare: this keeps them from piling up)."""
        now = time.time()
        self._bans = {
            user: held
            for user, held in self._bans.items()
            if held.until is not None and held.until > now and user != ban.user
        }
        if ban.until is not None and ban.until > now:
            self._bans[ban.user] = ban

    def of(self, user: str) -> Disconnect | None:
        """The ban that keeps *user* out now, if any."""
        ban = self._bans.get(user)
        if ban is None:
            return None
        if ban.until is None or ban.until <= time.time():
            del self._bans[user]
            return None
        return ban
