"""The WebSocket close codes Clarion sends, and the ones its clients report.

One table for the server (`service.session`, `service.wsstream`), the Python client
(`service.client`) and "Close codes" in docs/protocol.md, which a test compares with it. Error
codes (the ``error`` frame's ``code``) are on the error classes: `channels.errors` for
the engine's, `service.errors` for the wire's.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ("CloseCode",)


class CloseCode(IntEnum):
    """A WebSocket close code (RFC 6455 section 7.4; 4000-4999 are Clarion's own).

    ``reason`` (the member's name in lower case) is how the metrics and logs name a
    connection the server ended with it.
    """

    NORMAL = 1000
    """The client closed."""
    GOING_AWAY = 1001
    """The server is shutting down; reconnect (to another node) with ``since``."""
    PROTOCOL_ERROR = 1002
    """The client sent a frame RFC 6455 forbids."""
    ABNORMAL = 1006
    """Never sent: the connection ended (or never opened) without a close frame."""
    INVALID_PAYLOAD = 1007
    """A text message or close reason that is not UTF-8."""
    FRAME_TOO_LARGE = 1009
    """A client message over ``server.max_request_bytes``."""
    INTERNAL_ERROR = 1011
    """An unexpected server error."""
    SLOW_CONSUMER = 4000
    """The connection's outbox overflowed on a channel whose policy is ``disconnect``."""
    TOKEN_EXPIRED = 4001
    """The connection's token reached its ``exp`` without a ``refresh``."""
    NO_PONG = 4002
    """The client answered no ``ping`` within ``server.pong_timeout_seconds``."""
    DISCONNECTED = 4003
    """The server API disconnected the connection's user (the default code; a call may
    give another in 4003-4999, which the metrics count as ``disconnected`` too)."""

    @property
    def reason(self) -> str:
        """The code's name as the metrics and logs use it (``slow_consumer``)."""
        return self.name.lower()

    @classmethod
    def reason_of(cls, code: int) -> str:
        """How the metrics and logs name a close with *code*: its member's `reason`, or
        ``disconnected`` for another code the server API chose."""
        try:
            return cls(code).reason
        except ValueError:
            return cls.DISCONNECTED.reason
