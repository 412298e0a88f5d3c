"""The close and error codes of the Pusher protocol that Clarion sends (Pusher's
"Channels protocol" page, "Error codes"; docs/pusher.md lists them).

A Pusher client library decides from a close code whether to reconnect: 4000-4099
never, 4100-4199 after a backoff, 4200-4299 at once. An error about one request (a bad
event, a refused subscription or client event) is not a close: it is a
``pusher:error`` or ``pusher:subscription_error`` with one of Clarion's own error codes
(docs/protocol.md), which name the cause more precisely than Pusher's ``null``.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ("PusherCode",)


class PusherCode(IntEnum):
    """A Pusher close code (and ``pusher:error`` code) Clarion uses."""

    APP_NOT_FOUND = 4001
    """No app has the key of the path ``/app/{key}``."""
    OVER_QUOTA = 4004
    """The app has ``max_connections`` connections on this node already."""
    PATH_NOT_FOUND = 4005
    """The path is not ``/app/{key}``."""
    INVALID_VERSION = 4006
    """The ``protocol`` query parameter is not a number."""
    UNSUPPORTED_PROTOCOL = 4007
    """The ``protocol`` is not 5, 6 or 7."""
    NO_PROTOCOL = 4008
    """The ``protocol`` query parameter is missing."""
    UNAUTHORIZED = 4009
    """The app's backend ended the user's connections (``terminate_connections``)."""
    OVER_CAPACITY = 4100
    """The node is full or not started, or the connection could not keep up (a slow
    consumer): reconnect after a backoff."""
    RECONNECT = 4200
    """The node is shutting down: reconnect at once (to another node)."""
    PONG_NOT_RECEIVED = 4201
    """The client answered no ``pusher:ping`` in time."""
    CLIENT_EVENT_RATE = 4301
    """The client sent client events faster than its app's
    ``client_event_rate_per_second``."""
