"""The HTTP API's fast lane: a backend's POSTs answered beneath hypercorn's HTTP stack.

A backend publishes over keep-alive HTTP/1.1 connections, one small ``POST`` after
another. Through hypercorn each request costs a task, an ASGI queue, h11's state
machine both ways and three socket writes with a lock around each: measured under
``clarion bench`` (2026-12-05, 2 cores), about 270 µs of CPU a request on the asyncio
worker and 330 µs on trio, and on trio some twenty turns of the event loop, each one
waiting behind the flusher's writes when channels are busy. So `FastLane` looks at a
connection's bytes before hypercorn's HTTP/1.1 protocol does:

- A request it recognizes, strictly, and has whole is answered by the app's own handler
  (`Clarion.answer`, as through ASGI) and written in one send: ``POST`` to ``/api/...``
  or ``/apps/...`` (the Pusher door's API), HTTP/1.1, header names that are tokens,
  values without control characters, one ``host``, one ``content-length`` of digits
  within ``server.max_request_bytes``, no ``transfer-encoding``, ``expect`` or
  ``upgrade``, and a head within 16 KiB.
- Anything else (another method or path, a WebSocket handshake, HTTP/2, a head it does
  not take, a request not whole in what was read) goes to hypercorn's protocol with
  every byte that follows, as if there were no lane: h11 parses, times out and refuses
  as it always has. Once hypercorn holds no request, whole or in part, the lane looks
  at the next bytes again. Its rules are stricter than h11's, so that no request means
  one thing here and another there.

A connection keeps hypercorn's idle timer (``server.handshake_timeout_seconds``), which
the lane restarts after an answer once a quarter of it has passed: an idle connection
is closed between three quarters of it and all of it after its last answer. The lane
closes a connection after its answer when the request asked (``connection: close``),
after hypercorn's ``keep_alive_max_requests`` answers, or once the server is shutting
down.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import h11
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream

if TYPE_CHECKING:
    from hypercorn.events import Event

    from service.types import Scope

__all__ = ("FastLane", "Head", "Lane", "MAX_HEAD_BYTES", "parse_head")

logger = logging.getLogger("clarion")

#: What a request the lane takes starts with.
_STARTS: Final = (b"POST /api/", b"POST /apps/")
#: The longest head it reads (h11's own limit in hypercorn, ``h11_max_incomplete_size``).
MAX_HEAD_BYTES: Final = 16 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(rb"[0-9]{1,12}")
_REFUSED_HEADERS: Final = frozenset((b"transfer-encoding", b"expect", b"upgrade"))
_REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
Lane = Callable[["Scope", bytes], Awaitable[Answer]]
"""What answers a request the lane took: its scope (as hypercorn would give it) and
whole body, to the status, body and headers (``content-length`` aside)."""


class Head:
    """A request head the lane takes."""

    __slots__ = ("close", "headers", "length", "target")

    def __init__(
        self, target: bytes, headers: list[tuple[bytes, bytes]], length: int, close: bool
    ) -> None:
        self.target = target
        self.headers = headers
        self.length = length
        self.close = close


def parse_head(head: bytes, max_body_bytes: int) -> Head | None:
    """Parse *head* (up to, not including, its blank line) if the lane takes it."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
        return None
    target = parts[1]
    if not _TARGET.fullmatch(target) or not target.startswith((b"/api/", b"/apps/")):
        return None
    headers: list[tuple[bytes, bytes]] = []
    length = hosts = -1
    close = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return None  # obs-fold, whitespace before the colon, not a token
        value = value.strip(b" \t")
        if _CONTROL.search(value):
            return None
        name = name.lower()
        if name in _REFUSED_HEADERS:
            return None
        if name == b"content-length":
            if length >= 0 or not _DIGITS.fullmatch(value):
                return None
            length = int(value)
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            close = close or b"close" in (t.strip().lower() for t in value.split(b","))
        headers.append((name, value))
    if length < 0 or length > max_body_bytes or hosts != 0:
        return None
    return Head(target, headers, length, close)


def _answered(connection: h11.Connection) -> bool:
    return connection.our_state is h11.DONE and connection.their_state is h11.DONE


class FastLane(ProtocolWrapper):
    """hypercorn's protocol wrapper, with the lane in front of HTTP/1.1.

    *lane_of* finds the lane of the app hypercorn serves (None: no lane, as for any
    other app). hypercorn's TCP servers build this class in place of its own.
    """

    lane_of: Callable[[Any], tuple[Lane, int] | None] = staticmethod(lambda app: None)
    # Every connection has a wrapper, idle WebSockets included: what the lane keeps on
    # each is one attribute until it answers a request.
    _closed = False
    _timer_restarted = 0.0
    """When the lane last restarted hypercorn's idle timer (0: not yet)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._found = self.lane_of(self.app) if isinstance(self.protocol, H11Protocol) else None
        """The lane, and the largest body it takes; None: hypercorn's alone."""

    async def handle(self, event: Event) -> None:
        if self._closed and isinstance(event, RawData):
            return  # what follows an answer that closed the connection is not read
        if self._found is not None and isinstance(event, RawData):
            protocol = self.protocol
            connection = getattr(protocol, "connection", None)
            if isinstance(connection, h11.Connection) and _answered(connection):
                # hypercorn has sent its answer and is closing its request: what came is
                # the next one, which its own reader would hold until then (h11 PAUSED).
                assert isinstance(protocol, H11Protocol)
                await protocol.can_read.clear()  # neither worker's clear awaits anything
                await protocol.can_read.wait()
            if self._between_requests():
                await self._read(event.data)
                return
        await self._hypercorn(event)

    async def _hypercorn(self, event: Event) -> None:
        """Hand *event* to hypercorn's protocol; end a handshake it refused itself.

        hypercorn answers a WebSocket handshake it cannot take (HTTP/1.0, a version other
        than 13) with a 400 that says ``connection: close``, and then holds the
        connection until the client closes it: no app runs, no timer ends it. Its own
        stream end (as after any answer) closes it.
        """
        await super().handle(event)
        protocol = self.protocol
        if isinstance(protocol, H11Protocol):
            stream = protocol.stream
            if isinstance(stream, WSStream) and stream.closed and stream.app_put is None:
                await protocol.stream_send(StreamClosed(stream_id=stream.stream_id))

    def _between_requests(self) -> bool:
        """Whether hypercorn's HTTP/1.1 protocol holds no request, whole or in part: the
        lane may take the next one. (After a WebSocket handshake, never again.)"""
        protocol = self.protocol
        if not isinstance(protocol, H11Protocol) or protocol.stream is not None:
            return False
        connection = protocol.connection
        return (
            isinstance(connection, h11.Connection)
            and connection.our_state is h11.IDLE
            and connection.their_state is h11.IDLE
            and not connection.trailing_data[0]
        )

    async def _read(self, data: bytes) -> None:
        """Answer the whole requests at the start of *data* that the lane takes; hand
        the rest (another request, or one not whole yet) to hypercorn."""
        rest = data
        while rest.startswith(_STARTS):
            end = rest.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES + 4)
            if end < 0:
                break
            assert self._found is not None
            head = parse_head(rest[:end], self._found[1])
            start = end + 4
            if head is None or len(rest) < start + head.length:
                break
            body, rest = rest[start : start + head.length], rest[start + head.length :]
            if not await self._answer(head, body):
                return
        if rest or not data:
            await self._hypercorn(RawData(rest))

    async def _answer(self, head: Head, body: bytes) -> bool:
        """Answer one request; return whether the connection takes another."""
        raw_path, _, query = head.target.partition(b"?")
        scope = {
            "type": "http",
            "http_version": "1.1",
            "asgi": {"spec_version": "2.1", "version": "3.0"},
            "method": "POST",
            "scheme": "https" if self.ssl else "http",
            "path": unquote(raw_path.decode("ascii")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": self.config.root_path,
            "headers": head.headers,
            "client": self.client,
            "server": self.server,
            "extensions": {},
        }
        assert self._found is not None
        assert isinstance(self.protocol, H11Protocol)
        # hypercorn's idle timer runs on while the lane answers: restarted first when a
        # quarter of it has passed, it leaves the answer at least three quarters of it.
        now = time.monotonic()
        if now - self._timer_restarted > self.config.keep_alive_timeout / 4:
            self._timer_restarted = now
            await self.send(Updated(idle=True))
        try:
            status, content, headers = await self._found[0](scope, body)
        except Exception:  # a bug: answered as hypercorn answers an app that failed
            logger.exception("the fast lane's answer failed")
            status, content, headers = 500, b"", [(b"connection", b"close")]
        # One count of requests with hypercorn's, for its keep_alive_max_requests.
        self.protocol.keep_alive_requests += 1
        close = (
            head.close
            or self.protocol.keep_alive_requests >= self.config.keep_alive_max_requests
            or self.context.terminated.is_set()
            or any(name == b"connection" and value == b"close" for name, value in headers)
        )
        lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b""))]
        lines.append(b"content-length: %d" % len(content))
        lines += [name + b": " + value for name, value in headers if name != b"connection"]
        lines += [name + b": " + value for name, value in self.config.response_headers("h11")]
        if close:
            lines.append(b"connection: close")
        await self.send(RawData(b"\r\n".join(lines) + b"\r\n\r\n" + content))
        if close:
            self._found, self._closed = None, True
            await self.send(Closed())
            return False
        return True
