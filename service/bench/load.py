"""The load loop: subscriber connections, and what they receive.

One thread, one epoll loop, blocking setup then non-blocking sockets; the publisher
runs in a process of its own (`service.bench.publishers`), as a backend would. The
generator reports its CPU, both processes together: a run where it was near its core's
limit measured the generator as much as the server.

Latency runs from the time each message was due (not when it went out: a publisher that
the server holds back is counted) to its receipt. By default the receipt is when the
generator read the message, on every subscriber: what a client sees. With
``receipt="kernel"`` (Linux) it is the time the kernel received the packet
(``SO_TIMESTAMPNS``), which leaves out the time this one thread takes to get round to
each of a thousand sockets; reading those timestamps costs about a third more per read,
so they are read on about 100 subscribers spread evenly over the subscription order
(every subscriber still counts what it receives and loses). Both are on the realtime
clock, the kernel's timestamps' clock.
"""

from __future__ import annotations

import gc
import itertools
import math
import operator
import re
import socket
import struct
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from service.bench.poller import Poller
from service.bench.publishers import Schedule
from service.bench.wire import (
    OP_PONG,
    SETUP_SECONDS,
    FrameParser,
    client_frame,
    handshake,
    open_socket,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.bench.publishers import PublishingProcess

__all__ = (
    "Load",
    "StepResult",
    "Subscriber",
    "connect_pusher_subscribers",
    "connect_subscribers",
    "kernel_receive_times",
)

# A Pusher client gets the data as a JSON string: its quotes are escaped. (The pattern
# starts with a literal, which the regex engine searches for quickly.)
_TIME = re.compile(rb'"t\\?":(\d+)')
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


@dataclass
class StepResult:
    """What one publishing step measured."""

    rate: float
    subscribers: int
    scheduled: int = 0
    """Messages due in the measured part."""
    published: int = 0
    """Those of them the publisher sent (before the drain ran out)."""
    delivered: int = 0
    frames: int = 0
    dropped: int = 0
    errors: int = 0
    closed: int = 0
    latencies_ns: array[int] = field(default_factory=lambda: array("q"))
    publish_times_ns: array[int] = field(default_factory=lambda: array("q"))
    """From each message's schedule to the server's answer to its publish (HTTP)."""
    sent_ns: array[int] = field(default_factory=lambda: array("q"))
    """The stamps of the timed deliveries, until `settle`."""
    read_ns: array[int] = field(default_factory=lambda: array("q"))
    """When each of those was read, until `settle`."""
    doors: dict[str, StepResult] = field(default_factory=dict)
    """The same counts for the subscribers of each door, when a run mixes them."""
    wall_seconds: float = 0.0
    generator_cpu_seconds: float = 0.0
    server_cpu_seconds: float = 0.0

    def count(self, stamps: list[bytes], frames: int, read_ns: int, *, timed: bool) -> None:
        """Count deliveries of the messages *stamps*, read in *frames* at *read_ns*."""
        self.delivered += len(stamps)
        self.frames += frames
        if timed:
            self.sent_ns.extend(map(int, stamps))
            self.read_ns.extend(itertools.repeat(read_ns, len(stamps)))

    def settle(self) -> None:
        """Work out the latencies of what was counted."""
        self.latencies_ns.extend(map(operator.sub, self.read_ns, self.sent_ns))
        self.sent_ns, self.read_ns = array("q"), array("q")
        for part in self.doors.values():
            part.settle()

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
        self,
        subscribers: list[Subscriber],
        publisher: PublishingProcess,
        *,
        receipt: str = "kernel",
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
        self._poller = Poller()
        for subscriber in subscribers:
            self._poller.register(subscriber.sock, subscriber)
        self._poller.register(publisher.connection, publisher)
        self._buffer = bytearray(_RECEIVE_BYTES)
        self._view = memoryview(self._buffer)

    def close(self) -> None:
        self._poller.close()
        for subscriber in self.subscribers:
            subscriber.sock.close()
        self.publisher.close()

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
        # The generator's own pauses would count as latency: no cyclic garbage collection
        # while it measures (what it allocates holds no cycles), and none of what it
        # holds already looked at again afterwards.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            return self._run(rate, seconds, warmup, drain, server_cpu)
        finally:
            gc.enable()
            gc.unfreeze()

    def _run(
        self,
        rate: float,
        seconds: float,
        warmup: float,
        drain: float,
        server_cpu: Callable[[], float],
    ) -> StepResult:
        live = [subscriber for subscriber in self.subscribers if subscriber.close_code is None]
        result = StepResult(rate=rate, subscribers=len(live))
        doors = {subscriber.door for subscriber in live}
        if len(doors) > 1:
            for door in sorted(doors):
                count = sum(subscriber.door == door for subscriber in live)
                result.doors[door] = StepResult(rate=rate, subscribers=count)
        publisher = self.publisher
        interval = 1.0 / rate
        # Message k is due at start + k * interval, stamped with that time, and measured
        # from the first due after the warmup. The lead lets the publisher hear of it.
        first_measured = math.ceil(warmup * rate)
        lead = 0.05
        start, start_ns = time.monotonic() + lead, time.time_ns() + int(lead * 1e9)
        measure_from = start + first_measured * interval
        stop_publishing = measure_from + seconds
        schedule = Schedule(start, start_ns, interval, first_measured, stop_publishing)
        measure_from_ns = schedule.stamp(first_measured)
        publisher.start(schedule, drain)
        published = None
        deadline = stop_publishing + drain
        cpu_start = None
        server_cpu_start = 0.0
        while True:
            now = time.monotonic()
            if cpu_start is None and now >= measure_from:
                cpu_start, server_cpu_start = time.process_time(), server_cpu()
            if published is not None:
                expected = published.published * result.subscribers
                if result.delivered >= expected or now > deadline:
                    break
            elif now > deadline + SETUP_SECONDS:
                raise RuntimeError("the publisher did not report its run")
            timeout = 0.01 if now >= stop_publishing else max(0.001, stop_publishing - now)
            for data, _ in self._poller.ready(timeout):
                if data is publisher:
                    published = publisher.result(0)
                else:
                    self._receive(data, result, measure_from_ns)  # type: ignore[arg-type]
        result.wall_seconds = time.monotonic() - measure_from
        if cpu_start is not None:
            result.generator_cpu_seconds = time.process_time() - cpu_start
            result.server_cpu_seconds = server_cpu() - server_cpu_start
        assert published is not None
        result.generator_cpu_seconds += published.cpu_seconds
        result.scheduled, result.published = published.scheduled, published.published
        result.errors = published.errors
        result.settle()
        result.publish_times_ns = array("q")
        result.publish_times_ns.frombytes(published.response_times_ns)
        result.closed = sum(subscriber.close_code is not None for subscriber in live)
        for door, part in result.doors.items():
            part.scheduled, part.published = result.scheduled, result.published
            part.errors = result.errors
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
            self._poller.unregister(subscriber.sock)
            return
        received_ns = stamped or time.time_ns()
        answer = b""
        payloads = subscriber.parser.messages(self._view[:size])
        text = payloads[0] if len(payloads) == 1 else b"".join(payloads)
        if b'ping"' in text:  # one scan for the two, which are rare
            if _SERVER_PING in text:  # Clarion asks a quiet connection for a pong
                answer = _PONG
            elif _PUSHER_PING in text:
                answer = _PUSHER_PONG
        if b'"gap"' in text:
            for first, last in _GAP.findall(text):
                result.dropped += int(last) - int(first) + 1
        # The least work per message here: the stamps are kept as they are, and the
        # latencies worked out once the run is over (`StepResult.settle`).
        stamps = _TIME.findall(text)
        if stamps:
            subscriber.received += len(stamps)
            if int(stamps[0]) < measure_from_ns:  # the warmup's, some or all of them
                stamps = [stamp for stamp in stamps if int(stamp) >= measure_from_ns]
            if stamps:
                result.count(stamps, len(payloads), received_ns, timed=subscriber.timed)
                part = result.doors.get(subscriber.door)
                if part is not None:
                    part.count(stamps, len(payloads), received_ns, timed=subscriber.timed)
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
