"""The generator's publishers: over WebSocket, or as a backend does, over HTTP.

Both publish ~payload-byte messages stamped with the time each was *scheduled* (on the
realtime clock), not the time it went out: a publisher that the server holds back sends
late, and the latency of what it sends counts that wait.

- `WebSocketPublisher`: one connection that sends Clarion's ``publish`` requests,
  pipelined; it never waits for a reply.
- `HTTPPublisher`: a backend's ``POST /api/publish`` on keep-alive connections, one
  request in flight on each, so at most ``in_flight`` at once; a message due while every
  connection waits for its answer waits for the first one free. It times each request
  from the message's schedule to its answer, as the backend sees it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from array import array
from collections import deque
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgspec

from service.bench.poller import Poller
from service.bench.wire import (
    OP_PONG,
    SETUP_SECONDS,
    FrameParser,
    client_frame,
    handshake,
    open_socket,
)

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable
    from multiprocessing.connection import Connection

__all__ = (
    "HTTPPublisher",
    "Published",
    "Publisher",
    "PublishingProcess",
    "Schedule",
    "WebSocketPublisher",
    "publish_on",
)

_RECEIVE_BYTES = 1 << 16


class Publisher(Protocol):
    """What the load loop needs of a publisher."""

    errors: int
    """Publishes the server refused."""
    response_times_ns: array[int]
    """From a message's schedule to the server's answer (where answers are timed), for
    the messages stamped at or after ``timed_from_ns``."""
    timed_from_ns: int

    def attach(self, poller: Poller) -> None:
        """Register its sockets for reading, with itself as their data."""

    def publish(self, stamp_ns: int) -> bool:
        """Send a message stamped *stamp_ns*, or return False: none can go out now."""

    def readable(self, fd: int) -> None:
        """Read what the server sent on its socket *fd*."""

    def flush(self) -> None:
        """Send what is waiting, as far as the sockets take it."""

    def idle(self) -> bool:
        """Whether nothing it sent waits for an answer."""

    def close(self) -> None: ...


def _data(stamp_ns: int, padding: bytes) -> bytes:
    # {"t":<19 digits>,"p":"…"} is *payload* bytes in all.
    return b'{"t":%d,"p":"%s"}' % (stamp_ns, padding)


def _padding(payload: int) -> bytes:
    return b"x" * max(0, payload - len(b'{"t":0000000000000000000,"p":""}'))


class WebSocketPublisher:
    """A WebSocket connection that sends ``publish`` requests, pipelined."""

    def __init__(self, host: str, port: int, path: str, channel: str, payload: int) -> None:
        self.sock = open_socket(host, port)
        self.parser = FrameParser(handshake(self.sock, host, port, path))
        self.sock.setblocking(False)
        self.errors = 0
        self.response_times_ns: array[int] = array("q")
        self.timed_from_ns = 0
        self._outgoing = bytearray()
        self._head = b'{"type":"publish","channel":%s,"data":' % msgspec.json.encode(channel)
        self._padding = _padding(payload)

    def attach(self, poller: Poller) -> None:
        poller.register(self.sock, self)

    def publish(self, stamp_ns: int) -> bool:
        self._outgoing += client_frame(self._head + _data(stamp_ns, self._padding) + b"}")
        self.flush()
        return True

    def flush(self) -> None:
        if self._outgoing:
            try:
                sent = self.sock.send(self._outgoing)
            except BlockingIOError:
                return
            del self._outgoing[:sent]

    def idle(self) -> bool:
        return not self._outgoing  # it waits for no answer

    def readable(self, fd: int) -> None:
        """Read the publish replies (so that the publisher is never a slow consumer)."""
        try:
            data = self.sock.recv(_RECEIVE_BYTES)
        except BlockingIOError:
            return
        if not data:
            raise RuntimeError(f"the server closed the publisher ({self.parser.close_code})")
        for payload in self.parser.feed(data):
            if payload.startswith(b'{"type":"error"'):
                self.errors += 1
        while self.parser.pings:  # servers that ping (websockets does) want pongs
            self._outgoing += client_frame(self.parser.pings.pop(), OP_PONG)
        self.flush()

    def close(self) -> None:
        self.sock.close()


class _Request:
    """One keep-alive connection and the request it waits on."""

    __slots__ = ("received", "sock", "stamp_ns", "unsent")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.stamp_ns = 0
        """The schedule of the message whose answer it waits for (0: none)."""
        self.unsent = b""
        self.received = bytearray()


class HTTPPublisher:
    """``POST /api/publish`` on *in_flight* keep-alive connections (HTTP/1.1)."""

    def __init__(
        self,
        host: str,
        port: int,
        channel: str,
        payload: int,
        *,
        in_flight: int = 4,
        path: str = "/api/publish",
        api_key: str | None = None,
    ) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        self.host, self.port = host, port
        self.errors = 0
        self.response_times_ns: array[int] = array("q")
        self.timed_from_ns = 0
        authorization = f"authorization: Bearer {api_key}\r\n" if api_key else ""
        self._head = (
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n{authorization}"
            "content-type: application/json\r\ncontent-length: "
        ).encode()
        self._body_head = b'{"channel":%s,"data":' % msgspec.json.encode(channel)
        self._padding = _padding(payload)
        self._poller: Poller | None = None
        self._connections = [_Request(self._connect()) for _ in range(in_flight)]
        self._by_fd = {connection.sock.fileno(): connection for connection in self._connections}
        self._idle = deque(self._connections)  # first in, first out: every one kept warm

    def _connect(self) -> socket.socket:
        sock = open_socket(self.host, self.port)
        sock.setblocking(False)
        return sock

    def attach(self, poller: Poller) -> None:
        self._poller = poller
        for connection in self._connections:
            poller.register(connection.sock, self)

    def publish(self, stamp_ns: int) -> bool:
        if not self._idle:
            return False
        connection = self._idle.popleft()
        body = self._body_head + _data(stamp_ns, self._padding) + b"}"
        connection.stamp_ns = stamp_ns
        connection.unsent = self._head + b"%d\r\n\r\n" % len(body) + body
        self._send(connection)
        return True

    def idle(self) -> bool:
        return len(self._idle) == len(self._connections)

    def flush(self) -> None:
        for connection in self._connections:
            if connection.unsent:
                self._send(connection)

    def _send(self, connection: _Request) -> None:
        try:
            sent = connection.sock.send(connection.unsent)
        except BlockingIOError:
            return
        except OSError:
            sent = len(connection.unsent)  # the read that follows finds it closed
        connection.unsent = connection.unsent[sent:]

    def readable(self, fd: int) -> None:
        connection = self._by_fd[fd]
        try:
            data = connection.sock.recv(_RECEIVE_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._reconnect(connection)
            return
        connection.received += data
        while (answer := self._answer(connection)) is not None:
            status, closing = answer
            if connection.stamp_ns >= self.timed_from_ns:
                self.response_times_ns.append(time.time_ns() - connection.stamp_ns)
            if status != 200:
                self.errors += 1
            connection.stamp_ns = 0
            if closing:  # hypercorn closes a connection after 1,000 requests
                self._reconnect(connection)
                return
            self._idle.append(connection)

    @staticmethod
    def _answer(connection: _Request) -> tuple[int, bool] | None:
        """Take one whole response off *connection*'s buffer; return its status, and
        whether the server closes the connection after it."""
        received = connection.received
        end = received.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(received[:end]).lower()
        length, closing = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                closing = value.strip() == b"close"
        if len(received) < end + 4 + length:
            return None
        del received[: end + 4 + length]
        return int(head[9:12]), closing

    def _reconnect(self, connection: _Request) -> None:
        """Open another connection in place of *connection*, which the server closes
        (after its answer, or as an idle keep-alive's timeout). A request it was
        waiting on counts as an error."""
        if self._poller is not None:
            self._poller.unregister(connection.sock)
        del self._by_fd[connection.sock.fileno()]
        connection.sock.close()
        if connection.stamp_ns:
            self.errors += 1
        elif connection in self._idle:
            self._idle.remove(connection)
        connection.sock = self._connect()
        self._by_fd[connection.sock.fileno()] = connection
        connection.stamp_ns, connection.unsent = 0, b""
        connection.received.clear()
        if self._poller is not None:
            self._poller.register(connection.sock, self)
        self._idle.append(connection)

    def close(self) -> None:
        for connection in self._connections:
            connection.sock.close()


class Schedule(NamedTuple):
    """When each message is due: message k at ``start + k * interval`` (monotonic
    clock), stamped ``start_ns + k * interval`` (realtime clock), measured from message
    ``first_measured`` on, and none due at or after ``stop``."""

    start: float
    start_ns: int
    interval: float
    first_measured: int
    stop: float

    def stamp(self, k: int) -> int:
        return self.start_ns + int(k * self.interval * 1e9)


class Published(NamedTuple):
    """What a publisher did on a schedule."""

    scheduled: int
    """Messages due in the measured part."""
    published: int
    """Those of them it sent."""
    errors: int
    response_times_ns: bytes
    """An ``array("q")``'s bytes: from each measured message's schedule to its answer."""
    cpu_seconds: float
    """Its own CPU time from the measured part's start."""


def publish_on(publisher: Publisher, schedule: Schedule, drain: float) -> Published:
    """Publish on *schedule*; return once every message is sent and answered, or
    *drain* seconds after the last is due."""
    poller = Poller()
    publisher.attach(poller)
    publisher.timed_from_ns = schedule.stamp(schedule.first_measured)
    errors_before = publisher.errors
    measure_from = schedule.start + schedule.first_measured * schedule.interval
    deadline = schedule.stop + drain
    due = sent = scheduled = published = 0
    next_due = schedule.start
    cpu_start = None
    try:
        while True:
            now = time.monotonic()
            if cpu_start is None and now >= measure_from:
                cpu_start = time.process_time()
            while next_due <= now and next_due < schedule.stop:
                scheduled += due >= schedule.first_measured
                due += 1
                next_due = schedule.start + due * schedule.interval
            while sent < due and publisher.publish(schedule.stamp(sent)):
                published += sent >= schedule.first_measured
                sent += 1
            finished = next_due >= schedule.stop and sent == due
            if (finished and publisher.idle()) or now > deadline:
                break
            timeout = 0.01 if next_due >= schedule.stop else max(0.0, next_due - now)
            for _, fd in poller.ready(timeout):
                publisher.readable(fd)
            publisher.flush()
    finally:
        poller.close()
    times = publisher.response_times_ns
    publisher.response_times_ns = array("q")
    return Published(
        scheduled,
        published,
        publisher.errors - errors_before,
        times.tobytes(),
        time.process_time() - cpu_start if cpu_start is not None else 0.0,
    )


class PublishingProcess:
    """A publisher in a process of its own, as a backend is: the generator's loop over a
    thousand subscribers never holds it back, nor the other way round.

    Start it before the subscribers connect (it is forked, and would hold their sockets
    open). *open_publisher* runs in the new process.
    """

    def __init__(self, open_publisher: Callable[[], Publisher], core: int | None = None) -> None:
        context = multiprocessing.get_context("fork")
        self.connection, theirs = context.Pipe()
        self._process = context.Process(
            target=_publishing, args=(open_publisher, theirs), name="bench-publisher"
        )
        self._process.start()
        theirs.close()
        answer = self._receive(SETUP_SECONDS)
        if isinstance(answer, Exception):
            self.close()
            raise answer

    def start(self, schedule: Schedule, drain: float) -> None:
        """Publish on *schedule*; its `Published` arrives on `connection`."""
        self.connection.send((schedule, drain))

    def result(self, timeout: float) -> Published:
        answer = self._receive(timeout)
        if not isinstance(answer, Published):
            raise RuntimeError(f"the publisher failed: {answer!r}")
        return answer

    def _receive(self, timeout: float) -> object:
        if not self.connection.poll(timeout):
            raise RuntimeError("the publisher did not answer in time")
        return self.connection.recv()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.send(None)
        self._process.join(SETUP_SECONDS)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self.connection.close()


def _publishing(open_publisher: Callable[[], Publisher], connection: Connection) -> None:
    try:
        publisher = open_publisher()
    except Exception as exc:
        connection.send(RuntimeError(f"the publisher could not connect: {exc!r}"))
        return
    connection.send("ready")
    try:
        while (request := connection.recv()) is not None:
            schedule, drain = request
            try:
                connection.send(publish_on(publisher, schedule, drain))
            except Exception as exc:
                connection.send(RuntimeError(repr(exc)))
    except EOFError:
        pass
    finally:
        publisher.close()
