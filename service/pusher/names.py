"""What a Pusher channel is by its name (Pusher's "Channel types"), for the door and, as
`NAME_KINDS`, for the engine's rules (`channels.rules.NameKind`), which then hold
through every door.

- ``private-``: needs an authorization signed with the app's secret;
- ``private-encrypted-``: as ``private-``; its data is end-to-end encrypted by the clients,
  so client events are refused there;
- ``presence-``: needs an authorization naming the member; keeps presence;
- ``cache-``, ``private-cache-``, ``private-encrypted-cache-``, ``presence-cache-``: keep
  their last event for `CACHE_SECONDS`, sent to each new subscriber;
- ``#server-to-user-{id}``: the events the backend sends to a user (``send_to_user``),
  to that user's signed-in connections only.
"""

from __future__ import annotations

from typing import Final

from channels.rules import NameKind

__all__ = (
    "CACHE_SECONDS",
    "NAME_KINDS",
    "SERVER_TO_USER",
    "is_cache",
    "is_encrypted",
    "is_presence",
    "is_private",
)

#: The channel of a signed-in user's own events (``send_to_user``).
SERVER_TO_USER: Final = "#server-to-user-"
#: How long a cache channel keeps its last event (Pusher's: 30 minutes).
CACHE_SECONDS: Final = 30 * 60.0

_PRIVATE: Final = ("private-",)
_PRESENCE: Final = ("presence-",)
_ENCRYPTED: Final = ("private-encrypted-",)
_CACHE: Final = ("cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-")

NAME_KINDS: Final = (
    NameKind(SERVER_TO_USER, owned=True),
    NameKind("private-", private=True),
    NameKind("presence-", presence=True),
    *(NameKind(prefix, keep_last_seconds=CACHE_SECONDS) for prefix in _CACHE),
)
"""The engine's view of Pusher's names."""


def is_private(channel: str) -> bool:
    """Whether *channel* needs an authorization (a presence channel does too)."""
    return channel.startswith(_PRIVATE + _PRESENCE)


def is_presence(channel: str) -> bool:
    """Whether *channel* is a presence channel."""
    return channel.startswith(_PRESENCE)


def is_encrypted(channel: str) -> bool:
    """Whether *channel* is end-to-end encrypted by its clients."""
    return channel.startswith(_ENCRYPTED)


def is_cache(channel: str) -> bool:
    """Whether *channel* keeps its last event for new subscribers."""
    return channel.startswith(_CACHE)
