"""Summaries of benchmark runs: a table for people, JSON lines for scripts, an SVG chart."""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from service.bench.load import StepResult

__all__ = ("Summary", "histogram_svg", "median_summary", "summarize", "table")


class Summary(msgspec.Struct, kw_only=True):
    """One measured run, as printed and as written in JSON lines."""

    scenario: str
    server: str
    backend: str
    subscribers: int
    rate: float = 0.0
    offered_per_s: float = 0.0
    delivered_per_s: float = 0.0
    lost: int = 0
    dropped: int = 0
    closed: int = 0
    errors: int = 0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    msgs_per_frame: float = 0.0
    server_cpu: float = 0.0
    server_rss_mib: float = 0.0
    generator_cpu: float = 0.0
    kib_per_connection: float = 0.0
    receipt: str = ""
    """What latency ends at: ``kernel`` (the packet reached the client's socket) or
    ``read`` (the generator read it)."""
    publisher: str = ""
    """What published: ``http`` (a backend's ``POST /api/publish``) or ``websocket``."""
    unsent: int = 0
    """Messages due in the measured part that the publisher never got out."""
    publish_p50_ms: float = 0.0
    publish_p99_ms: float = 0.0
    """From a message's schedule to the answer to its publish (HTTP), as a backend
    waits for it."""


def _percentile(values: Sequence[int], fraction: float) -> float:
    """The nearest-rank percentile of sorted *values*, in milliseconds."""
    if not values:
        return 0.0
    index = min(len(values) - 1, max(0, math.ceil(fraction * len(values)) - 1))
    return values[index] / 1e6


def summarize(
    result: StepResult,
    *,
    scenario: str,
    server: str,
    backend: str,
    seconds: float,
    server_rss_kib: int,
    receipt: str,
    publisher: str = "",
) -> Summary:
    """Turn a step's raw counts into rates and latency percentiles."""
    latencies = sorted(result.latencies_ns)
    answers = sorted(result.publish_times_ns)
    wall = max(result.wall_seconds, 1e-9)
    return Summary(
        scenario=scenario,
        server=server,
        backend=backend,
        subscribers=result.subscribers,
        rate=result.rate,
        offered_per_s=result.scheduled * result.subscribers / seconds,
        # Messages that arrive after the publishing window, within the drain, still
        # count: lateness shows in the latency, and what never came in `lost`.
        delivered_per_s=result.delivered / seconds,
        lost=result.lost,
        dropped=result.dropped,
        closed=result.closed,
        errors=result.errors,
        p50_ms=_percentile(latencies, 0.50),
        p90_ms=_percentile(latencies, 0.90),
        p99_ms=_percentile(latencies, 0.99),
        max_ms=latencies[-1] / 1e6 if latencies else 0.0,
        msgs_per_frame=result.delivered / result.frames if result.frames else 0.0,
        server_cpu=result.server_cpu_seconds / wall,
        server_rss_mib=server_rss_kib / 1024,
        generator_cpu=result.generator_cpu_seconds / wall,
        receipt=receipt,
        publisher=publisher,
        unsent=result.scheduled - result.published,
        publish_p50_ms=_percentile(answers, 0.50),
        publish_p99_ms=_percentile(answers, 0.99),
    )


def median_summary(runs: Sequence[Summary]) -> Summary:
    """The run-by-run median of every number (lost, dropped and errors: the maximum)."""
    first = runs[0]
    fields: dict[str, object] = {}
    for name in Summary.__struct_fields__:
        values = [getattr(run, name) for run in runs]
        if isinstance(values[0], str):
            fields[name] = values[0]
        elif name in {"lost", "dropped", "errors", "closed", "unsent"}:
            fields[name] = max(values)
        elif isinstance(values[0], int):
            fields[name] = statistics.median_low(values)  # an even count stays a count
        else:
            fields[name] = statistics.median(values)
    fields["scenario"] = f"{first.scenario} (median of {len(runs)})"
    return msgspec.convert(fields, Summary)


_COLUMNS = [
    ("server", "server", "{}"),
    ("backend", "backend", "{}"),
    ("subscribers", "subs", "{:,}"),
    ("rate", "msg/s", "{:,.0f}"),
    ("offered_per_s", "offered/s", "{:,.0f}"),
    ("delivered_per_s", "delivered/s", "{:,.0f}"),
    ("lost", "lost", "{:,}"),
    ("dropped", "dropped", "{:,}"),
    ("p50_ms", "p50 ms", "{:.1f}"),
    ("p90_ms", "p90 ms", "{:.1f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("max_ms", "max ms", "{:.1f}"),
    ("msgs_per_frame", "msg/frame", "{:.1f}"),
    ("server_cpu", "srv CPU", "{:.0%}"),
    ("server_rss_mib", "srv RSS MiB", "{:.0f}"),
    ("generator_cpu", "gen CPU", "{:.0%}"),
    ("publisher", "publisher", "{}"),
    ("unsent", "unsent", "{:,}"),
    ("errors", "refused", "{:,}"),
    ("publish_p99_ms", "pub p99 ms", "{:.1f}"),
    ("receipt", "receipt", "{}"),
]
_IDLE_COLUMNS = [
    ("server", "server", "{}"),
    ("backend", "backend", "{}"),
    ("subscribers", "connections", "{:,}"),
    ("closed", "failed", "{:,}"),
    ("server_rss_mib", "srv RSS MiB", "{:.0f}"),
    ("kib_per_connection", "KiB/connection", "{:.1f}"),
]


def _cell(summary: Summary, name: str, form: str) -> str:
    if name == "publish_p99_ms" and summary.publisher == "websocket":
        return "n/a"  # a WebSocket publisher does not wait for answers
    return form.format(getattr(summary, name))


def table(summaries: Sequence[Summary]) -> str:
    """Render *summaries* as an aligned text table."""
    idle = all(summary.scenario.startswith("idle") for summary in summaries)
    columns = _IDLE_COLUMNS if idle else _COLUMNS
    rows = [[title for _, title, _ in columns]]
    for summary in summaries:
        rows.append([_cell(summary, name, form) for name, _, form in columns])
    widths = [max(len(row[index]) for row in rows) for index in range(len(columns))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def histogram_svg(latencies_ns: Sequence[int], title: str) -> str:
    """A latency histogram (log-scaled buckets from 0.1 ms to 10 s) as an SVG document."""
    buckets = 50
    low, high = math.log10(0.1), math.log10(10_000.0)
    counts = [0] * buckets
    for value in latencies_ns:
        position = (math.log10(max(value / 1e6, 1e-3)) - low) / (high - low)
        counts[min(buckets - 1, max(0, int(position * buckets)))] += 1
    width, height, margin = 800, 300, 40
    tallest = max(counts) or 1
    bar = (width - 2 * margin) / buckets
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{margin}" y="20" font-size="13">{_escape(title)}</text>',
    ]
    for index, count in enumerate(counts):
        bar_height = (height - 2 * margin - 20) * count / tallest
        x = margin + index * bar
        y = height - margin - bar_height
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 1:.1f}" height="{bar_height:.1f}" '
            f'fill="#4a7ebb"><title>{count:,}</title></rect>'
        )
    for exponent in range(-1, 5):
        x = margin + (exponent - low) / (high - low) * (width - 2 * margin)
        label = f"{10.0**exponent:g} ms"
        parts.append(
            f'<text x="{x:.1f}" y="{height - margin + 15}" text-anchor="middle">{label}</text>'
        )
    parts.append(
        f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">'
        "latency from publish to receipt (log scale)</text></svg>"
    )
    return "\n".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
