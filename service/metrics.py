"""Prometheus metrics for ``GET /metrics``, read from the node's counters when scraped.

Nothing here runs on the hot path: the hub and the outboxes keep plain integers (see
``channels.traffic``), the app and sessions count connections and errors in `NodeCounters`,
and `NodeCollector` turns them into Prometheus metrics only when Prometheus asks. No
metric has a channel name as a label, so the number of series stays fixed.
"""

from __future__ import annotations

from collections import Counter
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from channels.traffic import SEND_DELAY_BUCKETS_SECONDS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from channels.hub import Hub

__all__ = ("CONTENT_TYPE", "NodeCollector", "NodeCounters", "node_registry")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class NodeCounters:
    """What the app and its sessions count: connections, disconnects and errors.

    Attributes:
        accepted: WebSocket connections accepted.
        refused: handshakes refused, by error code (see the error table in docs/protocol.md).
        disconnects: ended connections, by reason: ``client`` (the client closed or
            went away), ``going_away`` (1001), ``slow_consumer`` (4000),
            ``token_expired`` (4001), ``no_pong`` (4002), ``frame_too_large`` (1009),
            ``protocol_error`` (1002: a frame RFC 6455 forbids) and ``invalid_payload``
            (1007: text that is not UTF-8), ``disconnected`` (4003 or another code of
            the server API's disconnect).
        errors: coded errors answered, by code: to WebSocket requests and HTTP API calls.
        webhook_events: webhook events by outcome: ``sent`` (a 2xx answer), ``failed``
            (every attempt failed) and ``dropped`` (the endpoint's queue was full).
    """

    __slots__ = ("accepted", "disconnects", "errors", "refused", "webhook_events")

    def __init__(self) -> None:
        self.accepted = 0
        self.refused: Counter[int] = Counter()
        self.disconnects: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self.webhook_events: Counter[str] = Counter()


class NodeCollector:
    """A Prometheus collector of one node: its hub (when running) and its counters."""

    def __init__(
        self,
        counters: NodeCounters,
        hub: Callable[[], Hub | None],
        apps: Callable[[], Iterable[tuple[str, Hub]]] = lambda: (),
    ) -> None:
        self._counters = counters
        self._hub = hub
        self._apps = apps
        """The Pusher door's apps: each one's id and hub."""

    def collect(self) -> Iterable[Metric]:
        """Yield every metric's current value."""
        counters = self._counters
        yield _counter(
            "clarion_connections_accepted", "WebSocket connections accepted.", counters.accepted
        )
        yield _by_label(
            "clarion_connections_refused",
            "WebSocket handshakes refused, by error code.",
            "code",
            counters.refused,
        )
        yield _by_label(
            "clarion_disconnects",
            "WebSocket connections ended, by reason.",
            "reason",
            counters.disconnects,
        )
        yield _by_label(
            "clarion_errors",
            "Coded errors answered to WebSocket requests and HTTP API calls, by code.",
            "code",
            counters.errors,
        )
        yield _by_label(
            "clarion_webhook_events",
            "Webhook events, by outcome: sent, failed (after every retry), dropped (queue full).",
            "outcome",
            counters.webhook_events,
        )
        yield from _per_app(list(self._apps()))
        hub = self._hub()
        if hub is None:
            return
        yield _gauge("clarion_draining", "1 while the node drains for shutdown.", hub.closing)
        stats = hub.statistics()
        traffic = hub.traffic
        yield _gauge("clarion_connections", "WebSocket connections open now.", stats.connections)
        yield _gauge("clarion_subscriptions", "Subscriptions held now.", stats.subscriptions)
        yield _gauge("clarion_channels", "Channels with a subscriber on this node.", stats.channels)
        yield _counter(
            "clarion_messages_published",
            "Messages this node accepted from its clients and HTTP API.",
            stats.accepted,
        )
        yield _counter(
            "clarion_messages_received",
            "Messages the broker handed to this node (every node's).",
            stats.published,
        )
        yield _counter(
            "clarion_messages_delivered",
            "Channel messages handed to connections to send (one per subscriber).",
            traffic.deliveries,
        )
        yield _counter(
            "clarion_messages_sent",
            "JSON objects sent: channel messages, replies, events and notices.",
            traffic.messages,
        )
        yield _counter(
            "clarion_frames_sent",
            "WebSocket frames sent; messages_sent / frames_sent is the coalescing ratio.",
            traffic.frames,
        )
        yield _counter("clarion_bytes_sent", "WebSocket payload bytes sent.", traffic.bytes)
        yield _counter(
            "clarion_messages_dropped",
            "Messages discarded by the drop_oldest and latest slow-consumer policies.",
            stats.dropped,
        )
        yield _counter(
            "clarion_slow_consumers",
            "Connections given up on as slow consumers (close 4000).",
            stats.slow_consumers,
        )
        cumulative = list(accumulate(traffic.delay_counts))
        bounds = [*(repr(bound) for bound in SEND_DELAY_BUCKETS_SECONDS), "+Inf"]
        yield HistogramMetricFamily(
            "clarion_send_delay_seconds",
            "Per frame, how long its oldest channel message waited between reaching "
            "this node's hub and being handed to the socket.",
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=traffic.delay_sum_seconds,
        )
        yield _gauge(
            "clarion_broker_ready", "1 while the broker takes publications.", stats.broker_ready
        )
        if stats.broker_round_trip_seconds is not None:
            yield _gauge(
                "clarion_broker_round_trip_seconds",
                "How long the broker's last check took, there and back.",
                stats.broker_round_trip_seconds,
            )


def _per_app(apps: list[tuple[str, Hub]]) -> Iterable[Metric]:
    """The Pusher door's apps, each by its ``app`` label (the default app's hub is the
    server's own: the same figures as the metrics without a label)."""
    if not apps:
        return
    families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "connections": GaugeMetricFamily(
            "clarion_app_connections", "WebSocket connections of each app.", labels=["app"]
        ),
        "subscriptions": GaugeMetricFamily(
            "clarion_app_subscriptions", "Subscriptions of each app.", labels=["app"]
        ),
        "channels": GaugeMetricFamily(
            "clarion_app_channels", "Channels of each app with a subscriber.", labels=["app"]
        ),
        "accepted": CounterMetricFamily(
            "clarion_app_messages_published", "Messages each app accepted.", labels=["app"]
        ),
        "deliveries": CounterMetricFamily(
            "clarion_app_messages_delivered",
            "Channel messages each app handed to its connections.",
            labels=["app"],
        ),
        "slow_consumers": CounterMetricFamily(
            "clarion_app_slow_consumers", "Each app's connections given up on.", labels=["app"]
        ),
    }
    for app_id, hub in sorted(apps, key=lambda item: item[0]):
        stats = hub.statistics()
        values = {
            "connections": stats.connections,
            "subscriptions": stats.subscriptions,
            "channels": stats.channels,
            "accepted": stats.accepted,
            "deliveries": hub.traffic.deliveries,
            "slow_consumers": stats.slow_consumers,
        }
        for name, family in families.items():
            family.add_metric([app_id], values[name])
    yield from families.values()


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_label(
    name: str, documentation: str, label: str, counts: Counter[int] | Counter[str]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted((str(key), count) for key, count in counts.items()):
        family.add_metric([value], count)
    return family


def node_registry(collector: NodeCollector) -> CollectorRegistry:
    """A registry of the node's own metrics and its process's (CPU, memory, files)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry
