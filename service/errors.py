"""The wire's errors: a request that cannot be read, or a connection that may not be.

Each class has a stable ``code`` (the ``error`` frame's) and the ``http_status`` the HTTP
API answers with. The engine's errors are in `channels.errors`; docs/protocol.md lists
both, and a test checks that its table matches them.
"""

from __future__ import annotations

import time
from typing import ClassVar

__all__ = (
    "AddressFull",
    "BadJSON",
    "BadMessage",
    "Banned",
    "InvalidToken",
    "MethodNotAllowed",
    "NodeFull",
    "NotStarted",
    "OriginNotAllowed",
    "ProtocolError",
    "RateLimited",
    "RequestId",
    "RequestTimeout",
    "RequestTooLarge",
    "RouteNotFound",
    "TokenExpired",
    "Unauthenticated",
    "Unauthorized",
    "UnknownOp",
    "UpgradeRequired",
)

#: The ``id`` of a request, echoed in its reply or error.
RequestId = int | str | None


class ProtocolError(Exception):
    """Base class of the wire-format errors; the request that caused it keeps its ``id``.

    Exception hierarchy (codes are stable and listed in docs/protocol.md)::

        ProtocolError
        ├── BadJSON           100  the frame or body is not JSON
        ├── BadMessage        101  JSON, but not a valid request (field missing, wrong type)
        ├── UnknownOp         102  the "type" names no operation
        ├── RequestTooLarge   103  an HTTP body over server.max_request_bytes
        ├── RouteNotFound     104  no HTTP route at this path
        ├── MethodNotAllowed  105  the route exists, the HTTP method does not
        ├── Unauthorized      106  the HTTP API key is missing or wrong
        ├── UpgradeRequired   107  a plain HTTP request to the WebSocket endpoint
        ├── Unauthenticated   108  a connection that needs a token came without one
        ├── InvalidToken      109  the token is malformed, wrongly signed or not for us
        ├── TokenExpired      110  the token's exp has passed (or its nbf not come)
        ├── OriginNotAllowed  111  a browser page from another site, not allowed
        ├── NodeFull          112  the node holds server.max_connections already
        ├── AddressFull       113  this client address is at its connection limit
        ├── RateLimited       114  publishing faster than the connection's rate
        ├── RequestTimeout    115  an HTTP body not in within the handshake timeout
        ├── NotStarted        116  the app's lifespan has not started it (or stopped it)
        └── Banned            117  the user is kept out by a disconnect with until
    """

    code: ClassVar[int] = 0
    http_status: ClassVar[int | None] = None
    """The HTTP API's status for it; None for an error only a WebSocket gets."""

    def __init__(self, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class BadJSON(ProtocolError):
    """Raised when a frame or request body is not valid JSON (or not UTF-8)."""

    code = 100
    http_status = 400


class BadMessage(ProtocolError):
    """Raised when valid JSON is not a valid request: a field is missing, unknown or mistyped."""

    code = 101
    http_status = 400


class UnknownOp(ProtocolError):
    """Raised when a request's ``type`` is not one of the operations."""

    code = 102
    http_status = 400


class RequestTooLarge(ProtocolError):
    """Raised when an HTTP request body exceeds ``server.max_request_bytes``."""

    code = 103
    http_status = 413


class RouteNotFound(ProtocolError):
    """Raised when no HTTP route or WebSocket endpoint exists at a path."""

    code = 104
    http_status = 404


class MethodNotAllowed(ProtocolError):
    """Raised when an HTTP route is asked with a method it does not serve."""

    code = 105
    http_status = 405

    def __init__(self, method: str, path: str, allowed: tuple[str, ...]) -> None:
        super().__init__(f"{method} is not allowed on {path}; use {' or '.join(allowed)}")
        self.allowed = allowed


class Unauthenticated(ProtocolError):
    """Raised when ``auth.required`` is set and a connection brings no token."""

    code = 108
    http_status = 401


class InvalidToken(ProtocolError):
    """Raised when a token does not verify: malformed, wrong signature or algorithm,
    wrong audience or issuer."""

    code = 109
    http_status = 401


class TokenExpired(ProtocolError):
    """Raised when a token's ``exp`` has passed or its ``nbf`` has not come yet."""

    code = 110
    http_status = 401


class OriginNotAllowed(ProtocolError):
    """Raised when a WebSocket handshake comes from a browser origin that is not allowed."""

    code = 111
    http_status = 403


class NodeFull(ProtocolError):
    """Raised when a handshake comes while the node holds ``server.max_connections``."""

    code = 112
    http_status = 503


class AddressFull(ProtocolError):
    """Raised when a client address already holds ``server.max_connections_per_address``."""

    code = 113
    http_status = 429


class RateLimited(ProtocolError):
    """Raised when a connection publishes faster than ``server.publish_rate_per_second``,
    or a Pusher app's backend than its ``backend_events_per_second``."""

    code = 114
    http_status = 429


class RequestTimeout(ProtocolError):
    """Raised when an HTTP request's body does not arrive within
    ``server.handshake_timeout_seconds``."""

    code = 115
    http_status = 408


class NotStarted(ProtocolError):
    """Raised when the app is asked for something outside its lifespan: it has not
    started, or has stopped (an app mounted in another must get the host's lifespan)."""

    code = 116
    http_status = 503

    def __init__(self) -> None:
        super().__init__(
            "Clarion is not running: its ASGI lifespan has not started it, or has stopped it"
        )


class Banned(ProtocolError):
    """Raised when a user disconnected by the server API with ``until`` connects before then."""

    code = 117
    http_status = 403

    def __init__(self, user: str, until: float) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
        super().__init__(f"user {user[:100]!r} is disconnected by the server until {when}")
        self.user = user
        self.until = until


class Unauthorized(ProtocolError):
    """Raised when the HTTP API needs a key and the request has none or a wrong one."""

    code = 106
    http_status = 401


class UpgradeRequired(ProtocolError):
    """Raised when the WebSocket endpoint is asked with plain HTTP."""

    code = 107
    http_status = 426
