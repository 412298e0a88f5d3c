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
    """The users kept out, each until a Unix time; expired bans are forgotten."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def add(self, user: str, until: float) -> None:
        """Keep *user* out until *until* (the later of two bans wins)."""
        if until > time.time():
            self._until[user] = max(until, self._until.get(user, 0.0))

    def replace(self, bans: dict[str, float]) -> list[str]:
        """Hold exactly *bans* (as the broker keeps them); return the users banned now."""
        now = time.time()
        self._until = {user: until for user, until in bans.items() if until > now}
        return list(self._until)

    def until(self, user: str) -> float | None:
        """When *user*'s ban ends, or None if *user* is not banned."""
        until = self._until.get(user)
        if until is None:
            return None
        if until <= time.time():
            del self._until[user]
            return None
        return until
