"""The benchmark scenarios: ``rate``, ``max`` and ``idle``."""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import anyio

from service.bench.load import (
    Load,
    StepResult,
    connect_pusher_subscribers,
    connect_subscribers,
)
from service.bench.publishers import (
    HTTPPublisher,
    Publisher,
    PublishingProcess,
    WebSocketPublisher,
)
from service.bench.report import Summary, summarize
from service.bench.server import ProcessStats, ServerProcess, pin
from service.bench.wire import SETUP_SECONDS
from service.client import ClarionError, open_client

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

__all__ = (
    "Options",
    "Target",
    "check_round_trip",
    "kept_up",
    "open_publisher",
    "open_target",
    "run_doors",
    "run_idle",
    "run_max",
    "run_rate",
)

Scenario = Literal["rate", "max", "idle", "hop", "doors"]

#: The app the ``doors`` scenario's server has (its secret is of no use outside the run).
_DOORS_CONFIG = """apps:
  - id: "1"
    key: {key}
    secret: ${{CLARION_BENCH_APP_SECRET}}
    default: true
"""


@dataclass
class Options:
    """Everything ``clarion bench`` was asked to do."""

    scenario: Scenario
    backend: str = "asyncio"
    target: str | None = None
    server_pid: int | None = None
    server_name: str = "clarion"
    config: Path | None = None
    subscribers: int = 1000
    rate: float = 200.0
    seconds: float = 10.0
    warmup: float = 2.0
    drain: float = 10.0
    payload: int = 100
    p99_ms: float = 100.0
    start_rate: float = 20.0
    factor: float = 1.25
    connections: int = 1000
    runs: int = 1
    server_core: int | None = 0
    generator_core: int | None = 1
    receipt: Literal["kernel", "read"] = "read"
    publisher: Literal["http", "websocket"] = "http"
    in_flight: int = 4
    api_key: str | None = None
    publish_url: str | None = None
    pusher_key: str = "bench"


@dataclass
class Target:
    """The server a run talks to, and how to read its CPU and memory."""

    host: str
    port: int
    path: str
    stats: ProcessStats | None
    api_port: int | None = None
    """Where ``POST /api/publish`` is served, when not on *port*."""

    def cpu_seconds(self) -> float:
        return self.stats.cpu_seconds() if self.stats else 0.0

    def rss_kib(self) -> int:
        return self.stats.rss_kib() if self.stats else 0


@contextmanager
def open_target(options: Options) -> Iterator[Target]:
    """Start a pinned ``clarion serve`` for the run, or use ``--target``."""
    pin(0, options.generator_core)
    if options.target is not None:
        url = urlsplit(options.target)
        stats = ProcessStats(options.server_pid) if options.server_pid else None
        api = urlsplit(options.publish_url) if options.publish_url else None
        api_port = api.port if api is not None else None
        yield Target(url.hostname or "127.0.0.1", url.port or 80, url.path or "/", stats, api_port)
        return
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as folder:
        log = Path(folder) / "server.log"
        config, env = options.config, None
        if options.scenario == "doors" and config is None:
            # The server's own channels, reached through the Pusher door as the default app.
            config = Path(folder) / "doors.yaml"
            config.write_text(_DOORS_CONFIG.format(key=options.pusher_key))
            env = {"CLARION_BENCH_APP_SECRET": secrets.token_hex(16)}
        server = ServerProcess.clarion(options.backend, options.server_core, log, config, env)
        try:
            _in_a_thread(check_round_trip, f"ws://127.0.0.1:{server.port}/ws")
            yield Target("127.0.0.1", server.port, "/ws", server.stats)
        finally:
            server.stop()


async def check_round_trip(url: str) -> None:
    """Make sure the server at *url* delivers a message before measuring it.

    Uses the Python client (`service.client`), so that a server that refuses the bench
    (a configuration that needs a token, or whose rules refuse ``bench:*`` channels)
    fails the run at once with the server's error code; the measured path is the
    generator's own minimal client (``service.bench.wire``), which costs far less per
    message.

    Raises:
        RuntimeError: if the server refuses, or the message does not come back in time.
    """
    channel = f"bench:check-{secrets.token_hex(4)}"
    try:
        with anyio.fail_after(SETUP_SECONDS):
            async with open_client(url, reconnect=False) as client:
                async with client.subscribe(channel) as messages:
                    await client.publish(channel, "check")
                    await messages.receive()
    except (ClarionError, TimeoutError) as exc:
        raise RuntimeError(f"{url} did not deliver a message: {exc!r}") from None


def open_publisher(
    options: Options, host: str, port: int, path: str, channel: str, api_port: int | None = None
) -> Publisher:
    """The publisher *options* ask for: a backend's ``POST /api/publish`` (on *api_port*,
    or *port*), or Clarion's ``publish`` over a WebSocket at *path*."""
    if options.publisher == "websocket":
        return WebSocketPublisher(host, port, path, channel, options.payload)
    return HTTPPublisher(
        host,
        api_port or port,
        channel,
        options.payload,
        in_flight=options.in_flight,
        api_key=options.api_key,
    )


def _in_a_thread(check: Callable[[str], Awaitable[None]], url: str) -> None:
    """Run *check* to the end on an event loop of its own, in a thread of its own.

    Not in this thread: run here, the event loop left the calling frames untraced
    (CPython 3.11, coverage.py 7.17), and the bench's own code unmeasured in the tests.
    """
    failures: list[Exception] = []

    def run() -> None:
        try:
            anyio.run(check, url)
        except Exception as exc:
            failures.append(exc)

    thread = threading.Thread(target=run, name="bench-check")
    thread.start()
    thread.join()
    if failures:
        raise failures[0]


def _measure(
    target: Target, options: Options, scenario: str, load: Load, rate: float
) -> tuple[Summary, StepResult]:
    result = load.run(rate, options.seconds, options.warmup, options.drain, target.cpu_seconds)
    summary = summarize(
        result,
        scenario=scenario,
        server=options.server_name,
        backend=options.backend,
        seconds=options.seconds,
        server_rss_kib=target.rss_kib(),
        receipt="kernel" if load.kernel_receipt else "read",
        publisher=options.publisher,
    )
    return summary, result


def _publishing(options: Options, target: Target, channel: str) -> PublishingProcess:
    """The publisher *options* ask for, in a process of its own (see `open_publisher`)."""
    return PublishingProcess(
        partial(
            open_publisher,
            options,
            target.host,
            target.port,
            target.path,
            channel,
            target.api_port,
        )
    )


@contextmanager
def _load(target: Target, options: Options) -> Iterator[Load]:
    channel = f"bench:{secrets.token_hex(4)}"
    publisher = _publishing(options, target, channel)
    try:
        subscribers = connect_subscribers(
            target.host, target.port, target.path, channel, options.subscribers
        )
    except BaseException:
        publisher.close()
        raise
    load = Load(subscribers, publisher, receipt=options.receipt)
    try:
        yield load
    finally:
        load.close()


def run_doors(target: Target, options: Options) -> tuple[list[Summary], StepResult]:
    """Publish at a fixed rate (through Clarion's protocol) to N subscribers of one
    channel, every other one through the Pusher door; summarize each door's."""
    channel = f"bench:{secrets.token_hex(4)}"
    half = options.subscribers // 2
    publisher = _publishing(options, target, channel)
    try:
        native = connect_subscribers(
            target.host, target.port, target.path, channel, options.subscribers - half
        )
        pusher = connect_pusher_subscribers(
            target.host, target.port, options.pusher_key, channel, half
        )
    except BaseException:
        publisher.close()
        raise
    # Interleaved, so that the subscribers timed by the kernel are of both doors.
    mixed = [s for pair in zip(native, pusher, strict=False) for s in pair]
    mixed += native[len(pusher) :]
    load = Load(mixed, publisher, receipt=options.receipt)
    try:
        result = load.run(
            options.rate, options.seconds, options.warmup, options.drain, target.cpu_seconds
        )
    finally:
        load.close()
    summaries = [
        summarize(
            part,
            scenario="doors",
            server=f"{options.server_name} ({door})",
            backend=options.backend,
            seconds=options.seconds,
            server_rss_kib=target.rss_kib(),
            receipt="kernel" if load.kernel_receipt else "read",
            publisher=options.publisher,
        )
        for door, part in result.doors.items()
    ]
    return summaries, result


def run_rate(target: Target, options: Options) -> tuple[Summary, StepResult]:
    """Publish at a fixed rate to N subscribers of one channel and measure."""
    with _load(target, options) as load:
        return _measure(target, options, "rate", load, options.rate)


def kept_up(summary: Summary, p99_ms: float) -> bool:
    """Whether a step sent every message when due (its publishes refused none), delivered
    at least 99% of what was offered, lost nothing, closed no subscriber, and kept its
    p99 latency within *p99_ms*.

    A server that falls behind delivers late: its latency grows until the p99 bound
    fails, or messages miss the drain and count as lost.
    """
    return (
        summary.lost == 0
        and summary.unsent == 0
        and summary.errors == 0
        and summary.closed == 0
        and summary.delivered_per_s >= 0.99 * summary.offered_per_s
        and summary.p99_ms <= p99_ms
    )


def run_max(target: Target, options: Options) -> tuple[Summary | None, list[Summary]]:
    """Raise the rate step by step; return the highest step kept up, and every step."""
    steps: list[Summary] = []
    best: Summary | None = None
    rate = options.start_rate
    with _load(target, options) as load:
        while True:
            summary, _ = _measure(target, options, "max", load, rate)
            steps.append(summary)
            if not kept_up(summary, options.p99_ms):
                return best, steps
            best = summary
            rate *= options.factor


def run_idle(target: Target, options: Options) -> Summary:
    """Hold K idle subscribed connections; report the server memory each one costs."""
    warm = connect_subscribers(target.host, target.port, target.path, "idle", 100)
    for subscriber in warm:
        subscriber.sock.close()
    time.sleep(1.0)
    before = target.rss_kib()
    held = connect_subscribers(target.host, target.port, target.path, "idle", options.connections)
    time.sleep(2.0)  # let the server settle (and collect garbage) before reading memory
    after = target.rss_kib()
    for subscriber in held:
        subscriber.sock.close()
    return Summary(
        scenario="idle",
        server=options.server_name,
        backend=options.backend,
        subscribers=len(held),
        server_rss_mib=after / 1024,
        kib_per_connection=(after - before) / max(1, len(held)),
    )
