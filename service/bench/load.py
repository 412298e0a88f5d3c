"""The load loop: subscriber connections, a publisher, and what they measure.

One thread, one epoll selector, blocking setup then non-blocking sockets: a Python
generator that stays far below one core at the loads it measures (it reports its own
CPU so that a run where it was the bottleneck can be told apart).

Latency runs from the publish to the message's receipt. On Linux the receipt is the
time the kernel received the packet (``SO_TIMESTAMPNS``), so that the time this one
thread takes to get round to each of a thousand sockets is not counted: a thousand real
clients each read their own. Reading those timestamps costs the generator about a third
more per read, so they are read on about 100 subscribers spread evenly over the
subscription order (every subscriber still counts what it receives and loses).
Elsewhere, or with ``receipt="read"``, latency ends when the generator read the message,
on every subscriber. Both are on the realtime clock, the kernel's timestamps' clock.
"""

from __future__ import annotations

import re
import selectors
import socket
import struct
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from service.bench.wire import OP_PONG, FrameParser, client_frame, handshake, open_socket

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = (
    "Load",
    "Publisher",
    "StepResult",
    "Subscriber",
    "connect_pusher_subscribers",
    "connect_subscribers",
    "kernel_receive_times",
)

# A Pusher client gets the data as a JSON string: its quotes are escaped.
_TIME = re.compile(rb'\\?"t\\?":(\d+)')
_OFFSET = re.compile(rb'"offset":(\d+)')
_GAP = re.compile(rb'"type":"gap","channel":"[^"]*","first":(\d+),"last":(\d+)')
_RECEIVE_BYTES = 1 << 20
_SETUP_BATCH = 256
_SERVER_PING = b'{"type":"ping"}'
_PONG = client_frame(b'{"type":"pong"}')
_PUSHER_PING = b'"event":"pusher:ping"'
_PUSHER_PONG = client_frame(b'{"event":"pusher:pong","data":{}}')
_PUSHER_SUBSCRIBED = b'"event":"pusher_internal:subscription_succeeded"'
# Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS), which Python's socket module lacks.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size)
_KERNEL_TIMED = 100  # subscribers whose latency the kernel's timestamps measure


def kernel_receive_times(sock: socket.socket) -> bool:
    """Ask the kernel to stamp what *sock* receives; return whether it will."""
    if sys.platform != "linux":
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


class Subscriber:
    """One subscribed connection and what it received."""

    __slots__ = (
        "close_code",
        "door",
        "kernel_timed",
        "next_offset",
        "parser",
        "received",
        "sock",
        "timed",
    )

    def __init__(
        self, sock: socket.socket, parser: FrameParser, next_offset: int, door: str = "clarion"
    ) -> None:
        self.sock = sock
        self.parser = parser
        self.next_offset = next_offset
        self.door = door
        """The protocol it speaks: ``clarion``, or ``pusher`` (the Pusher door)."""
        self.received = 0
        self.close_code: int | None = None
        self.timed = True
        """Whether the latencies of what it receives are recorded."""
        self.kernel_timed = False
        """Whether they end at the kernel's receive time."""


def _subscribe_frame(channel: str) -> bytes:
    return client_frame(msgspec.json.encode({"type": "subscribe", "id": 1, "channel": channel}))


def _read_reply(sock: socket.socket, parser: FrameParser) -> dict[str, object]:
    while True:
        data = sock.recv(65536)
        if not data:
            code = parser.close_code
            raise RuntimeError(f"the server closed the connection before replying ({code})")
        for payload in parser.feed(data):
            reply: dict[str, object] = msgspec.json.decode(payload)
            if reply.get("type") == "error":
                raise RuntimeError(f"subscribe failed: {reply}")
            return reply


def connect_subscribers(
    host: str, port: int, path: str, channel: str, count: int
) -> list[Subscriber]:
    """Open *count* connections subscribed to *channel*, in pipelined batches."""

    def subscribed(sock: socket.socket, parser: FrameParser) -> Subscriber:
        reply = _read_reply(sock, parser)
        offset = reply["offset"]
        if not isinstance(offset, int):
            raise RuntimeError(f"unexpected subscribe reply {reply}")
        return Subscriber(sock, parser, offset + 1)

    return _connect(host, port, path, _subscribe_frame(channel), count, subscribed)


def connect_pusher_subscribers(
    host: str, port: int, key: str, channel: str, count: int
) -> list[Subscriber]:
    """Open *count* Pusher-protocol connections (``/app/KEY``) subscribed to *channel*."""

    def subscribed(sock: socket.socket, parser: FrameParser) -> Subscriber:
        _read_until_subscribed(sock, parser)
        return Subscriber(sock, parser, 0, door="pusher")

    frame = client_frame(
        msgspec.json.encode({"event": "pusher:subscribe", "data": {"channel": channel}})
    )
    path = f"/app/{key}?protocol=7&client=clarion-bench"
    return _connect(host, port, path, frame, count, subscribed)


def _connect(
    host: str,
    port: int,
    path: str,
    frame: bytes,
    count: int,
    subscribed: Callable[[socket.socket, FrameParser], Subscriber],
) -> list[Subscriber]:
    """Open *count* connections at *path* that each send *frame*, in pipelined batches;
    *subscribed* reads each one's answer."""
    subscribers: list[Subscriber] = []
    while len(subscribers) < count:
        batch: list[tuple[socket.socket, FrameParser]] = []
        for _ in range(min(_SETUP_BATCH, count - len(subscribers))):
            sock = open_socket(host, port)
            parser = FrameParser(handshake(sock, host, port, path))
            sock.sendall(frame)
            batch.append((sock, parser))
        for sock, parser in batch:
            subscriber = subscribed(sock, parser)
            sock.setblocking(False)
            subscribers.append(subscriber)
    return subscribers


def _read_until_subscribed(sock: socket.socket, parser: FrameParser) -> None:
    pending = list(parser.feed(b""))
    while True:
        for payload in pending:
            if _PUSHER_SUBSCRIBED in payload:
                return
            if b'"pusher:error"' in payload or b'"pusher:subscription_error"' in payload:
                raise RuntimeError(f"subscribe failed: {payload!r}")
        data = sock.recv(65536)
        if not data:
            raise RuntimeError(f"the server closed the connection ({parser.close_code})")
        pending = list(parser.feed(data))


class Publisher:
    """A connection that publishes timestamped ~payload-byte messages, pipelined."""

    def __init__(self, host: str, port: int, path: str, channel: str, payload: int) -> None:
        self.sock = open_socket(host, port)
        self.parser = FrameParser(handshake(self.sock, host, port, path))
        self.sock.setblocking(False)
        self.published = 0
        self.errors = 0
        self._outgoing = bytearray()
        head = b'{"type":"publish","channel":%s,"data":{"t":' % msgspec.json.encode(channel)
        # {"t":<19 digits>,"p":"…"} is *payload* bytes of data in all.
        padding = max(0, payload - len(b'{"t":0000000000000000000,"p":""}'))
        self._head = head
        self._tail = b',"p":"' + b"x" * padding + b'"}}'

    def publish(self) -> int:
        """Send one message stamped with the realtime clock; return the stamp (ns)."""
        stamp = time.time_ns()
        self._outgoing += client_frame(self._head + str(stamp).encode() + self._tail)
        self.published += 1
        self.flush()
        return stamp

    def flush(self) -> None:
        if self._outgoing:
            try:
                sent = self.sock.send(self._outgoing)
            except BlockingIOError:
                return
            del self._outgoing[:sent]

    def drain_replies(self) -> None:
        """Read the publish replies (so that the publisher is never a slow consumer)."""
        try:
            data = self.sock.recv(_RECEIVE_BYTES)
        except BlockingIOError:
            return
        for payload in self.parser.feed(data):
            if payload.startswith(b'{"type":"error"'):
                self.errors += 1
        while self.parser.pings:  # servers that ping (websockets does) want pongs
            self._outgoing += client_frame(self.parser.pings.pop(), OP_PONG)
        self.flush()


@dataclass
class StepResult:
    """What one publishing step measured."""

    rate: float
    subscribers: int
    published: int = 0
    delivered: int = 0
    frames: int = 0
    dropped: int = 0
    errors: int = 0
    closed: int = 0
    latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    doors: dict[str, StepResult] = field(default_factory=dict)
    """The same counts for the subscribers of each door, when a run mixes them."""
    wall_seconds: float = 0.0
    generator_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0

    @property
    def expected(self) -> int:
        return self.published * self.subscribers

    @property
    def lost(self) -> int:
        """Messages never received and not reported dropped by a slow-consumer policy."""
        return max(0, self.expected - self.delivered - self.dropped)


class Load:
    """Subscribers plus a publisher on one selector."""

    def __init__(
        self, subscribers: list[Subscriber], publisher: Publisher, *, receipt: str = "kernel"
    ) -> None:
        self.subscribers = subscribers
        self.publisher = publisher
        # Spread evenly over the subscription order, and over each door alike.
        doors = sorted({subscriber.door for subscriber in subscribers})
        timed = []
        for door in doors:
            of_door = [subscriber for subscriber in subscribers if subscriber.door == door]
            step = max(1, len(of_door) * len(doors) // _KERNEL_TIMED)
            timed += of_door[::step]
        self.kernel_receipt = receipt == "kernel" and all(
            kernel_receive_times(subscriber.sock) for subscriber in timed
        )
        """Whether latency ends at the kernel's receive time (else: when read)."""
        if self.kernel_receipt:
            for subscriber in subscribers:
                subscriber.timed = False
            for subscriber in timed:
                subscriber.timed = subscriber.kernel_timed = True
        self._selector = selectors.DefaultSelector()
        for subscriber in subscribers:
            self._selector.register(subscriber.sock, selectors.EVENT_READ, subscriber)
        self._selector.register(publisher.sock, selectors.EVENT_READ, publisher)
        self._buffer = bytearray(_RECEIVE_BYTES)
        self._view = memoryview(self._buffer)

    def close(self) -> None:
        self._selector.close()
        for subscriber in self.subscribers:
            subscriber.sock.close()
        self.publisher.sock.close()

    def run(
        self,
        rate: float,
        seconds: float,
        warmup: float,
        drain: float,
        server_cpu: Callable[[], float] = lambda: 0.0,
    ) -> StepResult:
        """Publish at *rate* per second for *warmup* + *seconds*; measure the last part.

        Messages published during the warmup are received but not counted. After the
        last publish, waits up to *drain* seconds for every message to arrive.
        *server_cpu* reads the server's CPU seconds, sampled over the measured part.
        """
        live = [subscriber for subscriber in self.subscribers if subscriber.close_code is None]
        result = StepResult(rate=rate, subscribers=len(live))
        doors = {subscriber.door for subscriber in live}
        if len(doors) > 1:
            for door in sorted(doors):
                count = sum(subscriber.door == door for subscriber in live)
                result.doors[door] = StepResult(rate=rate, subscribers=count)
        publisher = self.publisher
        errors_before = publisher.errors
        interval = 1.0 / rate
        start = time.monotonic()
        measure_from = start + warmup
        measure_from_ns = time.time_ns() + int(warmup * 1e9)
        stop_publishing = measure_from + seconds
        next_publish = start
        deadline = None
        cpu_start = None
        server_cpu_start = 0.0
        while True:
            now = time.monotonic()
            if cpu_start is None and now >= measure_from:
                cpu_start, server_cpu_start = time.process_time(), server_cpu()
            while next_publish <= now and next_publish < stop_publishing:
                if publisher.publish() >= measure_from_ns:
                    result.published += 1
                next_publish += interval
            if deadline is None and next_publish >= stop_publishing:
                deadline = now + drain
            if deadline is not None and (result.delivered >= result.expected or now > deadline):
                break
            timeout = 0.01 if deadline is not None else max(0.0, next_publish - now)
            for key, _ in self._selector.select(timeout):
                if key.data is publisher:
                    publisher.drain_replies()
                else:
                    self._receive(key.data, result, measure_from_ns)
            publisher.flush()
        result.wall_seconds = time.monotonic() - measure_from
        if cpu_start is not None:
            result.generator_cpu_seconds = time.process_time() - cpu_start
            result.server_cpu_seconds = server_cpu() - server_cpu_start
        result.errors = publisher.errors - errors_before
        result.closed = sum(subscriber.close_code is not None for subscriber in live)
        for door, part in result.doors.items():
            part.published, part.errors = result.published, result.errors
            part.wall_seconds = result.wall_seconds
            part.generator_cpu_seconds = result.generator_cpu_seconds
            part.server_cpu_seconds = result.server_cpu_seconds
            part.closed = sum(s.close_code is not None for s in live if s.door == door)
        return result

    def _receive(self, subscriber: Subscriber, result: StepResult, measure_from_ns: int) -> None:
        stamped = 0
        try:
            if subscriber.kernel_timed:
                size, ancillary, _, _ = subscriber.sock.recvmsg_into(
                    [self._buffer], _ANCILLARY_BYTES
                )
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                        seconds, nanoseconds = _TIMESPEC.unpack(data[: _TIMESPEC.size])
                        # With several packets read at once: the last one's time.
                        stamped = seconds * 1_000_000_000 + nanoseconds
            else:
                size = subscriber.sock.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError:
            size = 0
        if size == 0:
            if subscriber.close_code is None:
                subscriber.close_code = subscriber.parser.close_code or 1006
            self._selector.unregister(subscriber.sock)
            return
        received_ns = stamped or time.time_ns()
        latencies = result.latencies_ns
        answer = b""
        part = result.doors.get(subscriber.door)
        for payload in subscriber.parser.feed(self._view[:size]):
            if _SERVER_PING in payload:  # Clarion asks a quiet connection for a pong
                answer = _PONG
            elif _PUSHER_PING in payload:
                answer = _PUSHER_PONG
            if b'"gap"' in payload:
                for first, last in _GAP.findall(payload):
                    result.dropped += int(last) - int(first) + 1
            stamps = [int(stamp) for stamp in _TIME.findall(payload)]
            counted = [received_ns - stamp for stamp in stamps if stamp >= measure_from_ns]
            if counted:
                if subscriber.timed:
                    latencies.extend(counted)
                result.delivered += len(counted)
                result.frames += 1
                if part is not None:
                    if subscriber.timed:
                        part.latencies_ns.extend(counted)
                    part.delivered += len(counted)
                    part.frames += 1
            subscriber.received += len(stamps)
        if subscriber.parser.close_code is not None and subscriber.close_code is None:
            subscriber.close_code = subscriber.parser.close_code
        # Servers that ping with control frames (websockets does) want pong frames.
        pings = subscriber.parser.pings
        answer += b"".join(client_frame(payload, OP_PONG) for payload in pings)
        pings.clear()
        if answer:
            subscriber.sock.setblocking(True)
            subscriber.sock.sendall(answer)
            subscriber.sock.setblocking(False)
