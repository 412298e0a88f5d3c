"""The ``hop`` scenario: the latency that going through Redis adds to a message.

The same fixed-rate load runs twice: against one node on the memory broker, then
across two nodes that share the channel through Redis, with the publisher on one node
and every subscriber on the other, so that each message makes the whole trip: node A,
Redis (the Lua publish, then pub/sub), node B, subscribers.
"""

from __future__ import annotations

import secrets
import tempfile
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from service.bench.load import Load, connect_subscribers
from service.bench.publishers import PublishingProcess
from service.bench.report import Summary, summarize
from service.bench.scenarios import open_publisher
from service.bench.server import RedisServer, ServerProcess, find_redis_server, pin

if TYPE_CHECKING:
    from collections.abc import Iterator

    from service.bench.scenarios import Options

__all__ = ("HopResult", "added_latency", "run_hop")


class HopResult(msgspec.Struct, frozen=True):
    """What the Redis hop added to the latency percentiles."""

    added_p50_ms: float
    added_p99_ms: float

    def describe(self) -> str:
        return f"the Redis hop adds p50 {self.added_p50_ms} ms, p99 {self.added_p99_ms} ms"


@contextmanager
def _redis(url: str | None, folder: Path) -> Iterator[str]:
    if url is not None:
        yield url
        return
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("clarion bench hop: no redis-server found; pass --redis URL")
    server = RedisServer(binary, folder)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def _run(
    options: Options, name: str, publish_to: ServerProcess, read_from: ServerProcess
) -> Summary:
    channel = f"bench:{secrets.token_hex(4)}"
    publisher = PublishingProcess(
        partial(open_publisher, options, "127.0.0.1", publish_to.port, "/ws", channel)
    )
    try:
        subscribers = connect_subscribers(
            "127.0.0.1", read_from.port, "/ws", channel, options.subscribers
        )
    except BaseException:
        publisher.close()
        raise
    load = Load(subscribers, publisher, receipt=options.receipt)
    try:

        def cpu_seconds() -> float:
            return publish_to.stats.cpu_seconds() + (
                read_from.stats.cpu_seconds() if read_from is not publish_to else 0.0
            )

        result = load.run(options.rate, options.seconds, options.warmup, options.drain, cpu_seconds)
    finally:
        load.close()
    return summarize(
        result,
        scenario="hop",
        server=name,
        backend=options.backend,
        seconds=options.seconds,
        server_rss_kib=read_from.stats.rss_kib(),
        receipt="kernel" if load.kernel_receipt else "read",
        publisher=options.publisher,
    )


def run_hop(options: Options, redis_url: str | None) -> tuple[list[Summary], HopResult]:
    """Measure one node, then two nodes through Redis; return both and the difference.

    Starts a private ``redis-server`` unless *redis_url* names one (the keys it writes
    start with a random prefix).
    """
    pin(0, options.generator_core)
    with tempfile.TemporaryDirectory(prefix="clarion-hop-") as name, ExitStack() as stack:
        folder = Path(name)
        url = stack.enter_context(_redis(redis_url, folder))
        config = folder / "redis.yaml"
        broker = {"kind": "redis", "url": url, "prefix": f"bench{secrets.token_hex(4)}"}
        config.write_bytes(msgspec.yaml.encode({"broker": broker}))

        def start(label: str, config_path: Path | None) -> ServerProcess:
            server = ServerProcess.clarion(
                options.backend, options.server_core, folder / f"{label}.log", config_path
            )
            stack.callback(server.stop)
            return server

        alone = start("alone", None)
        one = _run(options, "one node (memory)", alone, alone)
        alone.stop()
        a, b = start("a", config), start("b", config)
        two = _run(options, "two nodes (Redis)", a, b)
    return [one, two], added_latency(one, two)


def added_latency(one: Summary, two: Summary) -> HopResult:
    """The difference between the one-node run *one* and the two-node run *two*."""
    return HopResult(
        added_p50_ms=round(two.p50_ms - one.p50_ms, 2),
        added_p99_ms=round(two.p99_ms - one.p99_ms, 2),
    )
