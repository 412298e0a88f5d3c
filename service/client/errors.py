"""The exceptions of the Python client (`service.client`).

Exception hierarchy::

    ClarionError                the server refused something, or the connection ended
    ├── HandshakeRefused        the server answered the upgrade with an HTTP error
    ├── ConnectionFailed        no WebSocket could be opened (refused, timed out, TLS...)
    ├── ConnectionClosed        the WebSocket closed; ``code`` is its close code
    └── SubscriptionEnded       a subscription ended while the connection stayed
        └── SlowSubscriber      its buffer overflowed: the consumer fell behind

Every error has a stable numeric ``code``: below 1000 one of the error codes in docs/protocol.md
(compare with the server's classes, ``exc.code == ChannelNotFound.code``), from 1000 a
WebSocket close code (docs/protocol.md, "Close codes"; 1006 when the connection dropped, or never
opened, without one). Using a client after it was closed raises anyio's
``ClosedResourceError`` instead: the Closed/Broken split of the style guide.
"""

from __future__ import annotations

from service.closecodes import CloseCode

__all__ = (
    "ClarionError",
    "ConnectionClosed",
    "ConnectionFailed",
    "HandshakeRefused",
    "SlowSubscriber",
    "SubscriptionEnded",
    "clone_error",
)


class ClarionError(Exception):
    """Raised when the server answers a request with an ``error`` (``code`` and
    ``message`` are the frame's), and the base class of the client's other errors."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class HandshakeRefused(ClarionError):
    """Raised when the server answers the WebSocket upgrade with an HTTP error.

    ``code`` is the Clarion code of the JSON body (108 unauthenticated, 109 invalid
    token, 110 token expired, 111 origin not allowed, 112 node full, 113 address full,
    300 server closing...), or 0 when the body is not a Clarion error (a proxy's page).
    """

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(code, f"HTTP {status}: {message}")
        self.status = status


class ConnectionFailed(ClarionError):
    """Raised when no WebSocket could be opened: the TCP connection was refused or timed
    out, TLS failed, or the peer does not speak WebSocket. The cause is chained."""

    def __init__(self, message: str) -> None:
        super().__init__(CloseCode.ABNORMAL, message)


class ConnectionClosed(ClarionError):
    """Raised when the WebSocket closed: by a request that was waiting for its reply
    (whether the server carried it out is unknown), and, once the client gives up, by
    everything (a close code it does not reconnect after, such as 1009 or 1011)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, f"connection closed: {reason or 'no reason given'}")
        self.reason = reason


class SubscriptionEnded(ClarionError):
    """Raised by a subscription's stream, after the events received before, when the
    subscription ended but the connection did not: the server's ``unsubscribed`` notice
    (a configuration reload no longer allows it: 201 or 202), or a resubscription after
    a reconnect that the server refused (the refusal's code)."""

    def __init__(self, channel: str, code: int, message: str) -> None:
        super().__init__(code, f"subscription to {channel!r} ended: {message}")
        self.channel = channel


class SlowSubscriber(SubscriptionEnded):
    """Raised by a subscription's stream, after the events it holds, when events came
    faster than its consumer read them and its buffer overflowed. Code 4000, as the
    server's slow-consumer close: the client unsubscribed, the connection stays, and
    ``subscribe(channel, since=subscription.position)`` resumes where it stopped."""

    def __init__(self, channel: str, buffer_events: int) -> None:
        message = f"its buffer of {buffer_events} events overflowed"
        super().__init__(channel, CloseCode.SLOW_CONSUMER, message)
        self.buffer_events = buffer_events


def clone_error(error: ClarionError) -> ClarionError:
    """Return a copy of *error*, to raise again: an error that ends a client or a
    subscription is raised to every later caller, and a single instance would collect
    all of their tracebacks."""
    clone = type(error).__new__(type(error))
    clone.__dict__.update(error.__dict__)
    clone.args = error.args
    clone.__cause__ = error.__cause__
    return clone
