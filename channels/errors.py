"""The engine's exceptions, each with a stable numeric code.

Exception hierarchy::

    ChannelsError
    ├── ConfigError             10   the YAML configuration is invalid
    ├── InvalidChannelName     200   a channel name breaks the naming rules
    ├── ChannelNotFound        201   no channel rule matches the name
    ├── PermissionDenied       202   the rule forbids this action to clients
    ├── AlreadySubscribed      203   subscribe twice to one channel
    ├── NotSubscribed          204   unsubscribe from a channel never subscribed
    ├── MessageTooLarge        205   a message exceeds its rule's max_message_bytes
    ├── PresenceDisabled       206   presence asked of a channel whose rule keeps none
    ├── TooManySubscriptions   207   a connection is at server.max_subscriptions
    ├── InvalidData            208   a message's data does not have its rule's shape
    ├── TooManyChannels        209   a broadcast names more than broadcast_max_channels
    ├── UnsubscribedByServer   210   the server API ended the user's subscription
    ├── ServerClosing          300   the node is shutting down
    └── BrokerUnavailable      301   the broker (Redis) cannot be reached

The codes are sent to clients in ``error`` replies and never reused; ``http_status`` is
the status the HTTP API answers with (None: the error happens only on a WebSocket).
``service.errors`` holds the wire's errors (1xx); ``service.closecodes`` the WebSocket
close codes (a slow consumer is closed with 4000). docs/protocol.md lists every code, and
a test checks that its tables match.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = (
    "AlreadySubscribed",
    "BrokerUnavailable",
    "ChannelNotFound",
    "ChannelsError",
    "ConfigError",
    "InvalidChannelName",
    "InvalidData",
    "MessageTooLarge",
    "NotSubscribed",
    "PermissionDenied",
    "PresenceDisabled",
    "ServerClosing",
    "TooManyChannels",
    "TooManySubscriptions",
    "UnsubscribedByServer",
)


class ChannelsError(Exception):
    """Base class of every error the engine raises on purpose."""

    code: ClassVar[int] = 0
    http_status: ClassVar[int | None] = None
    """The HTTP API's status for it; None for an error only a WebSocket gets."""


class ConfigError(ChannelsError):
    """Raised when a configuration file cannot be read, parsed or validated."""

    code = 10
    http_status = 422


class InvalidChannelName(ChannelsError):
    """Raised when a channel name is empty, too long or has a character outside the set."""

    code = 200
    http_status = 400

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(f"invalid channel name {channel[:300]!r}: {reason}")
        self.channel = channel
        self.reason = reason


class ChannelNotFound(ChannelsError):
    """Raised when no declared channel rule (exact name or pattern) matches a name."""

    code = 201
    http_status = 404

    def __init__(self, channel: str) -> None:
        super().__init__(f"no channel rule matches {channel!r}")
        self.channel = channel


class PermissionDenied(ChannelsError):
    """Raised when a channel's rule does not let clients perform *action* on it."""

    code = 202
    http_status = 403

    def __init__(self, channel: str, action: str, reason: str | None = None) -> None:
        because = f": {reason}" if reason else ""
        super().__init__(f"clients may not {action} on channel {channel!r}{because}")
        self.channel = channel
        self.action = action
        self.reason = reason


class AlreadySubscribed(ChannelsError):
    """Raised when a subscriber subscribes to a channel it is already subscribed to."""

    code = 203

    def __init__(self, channel: str) -> None:
        super().__init__(f"already subscribed to {channel!r}")
        self.channel = channel


class NotSubscribed(ChannelsError):
    """Raised when a subscriber leaves a channel it is not subscribed to."""

    code = 204

    def __init__(self, channel: str) -> None:
        super().__init__(f"not subscribed to {channel!r}")
        self.channel = channel


class MessageTooLarge(ChannelsError):
    """Raised when a message's data is larger than its channel rule allows."""

    code = 205
    http_status = 413

    def __init__(self, channel: str, size: int, limit: int) -> None:
        super().__init__(
            f"message of {size} bytes exceeds the {limit}-byte limit of channel {channel!r}"
        )
        self.channel = channel
        self.size = size
        self.limit = limit


class PresenceDisabled(ChannelsError):
    """Raised when presence is asked of a channel whose rule has ``presence: false``."""

    code = 206
    http_status = 409

    def __init__(self, channel: str) -> None:
        super().__init__(f"channel {channel!r} keeps no presence (its rule has presence: false)")
        self.channel = channel


class InvalidData(ChannelsError):
    """Raised when a published message's ``data`` does not have its rule's shape."""

    code = 208
    http_status = 422

    def __init__(self, channel: str, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason} (the shape of channel {channel!r})")
        self.channel = channel
        self.field = field
        self.reason = reason


class TooManySubscriptions(ChannelsError):
    """Raised when a connection subscribes beyond ``server.max_subscriptions``."""

    code = 207

    def __init__(self, limit: int) -> None:
        super().__init__(f"a connection may hold at most {limit} subscriptions")
        self.limit = limit


class TooManyChannels(ChannelsError):
    """Raised when a broadcast names more channels than ``server.broadcast_max_channels``."""

    code = 209
    http_status = 400

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"a broadcast may name at most {limit} channels, not {count}")
        self.count = count
        self.limit = limit


class UnsubscribedByServer(ChannelsError):
    """Why a subscription ended when the server API unsubscribed its user from it."""

    code = 210

    def __init__(self, channel: str) -> None:
        super().__init__(f"the server ended this connection's subscription to {channel!r}")
        self.channel = channel


class ServerClosing(ChannelsError):
    """Raised when an operation arrives while the node is shutting down."""

    code = 300
    http_status = 503

    def __init__(self) -> None:
        super().__init__("the server is shutting down; reconnect to another node")


class BrokerUnavailable(ChannelsError):
    """Raised when the broker cannot take an operation: Redis is down, slow or restarting.

    A publish that raises this was not accepted: nothing was delivered or kept.
    """

    code = 301
    http_status = 503

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"the broker is unavailable, {operation} failed: {reason}; retry later")
        self.operation = operation
        self.reason = reason
