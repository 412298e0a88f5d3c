"""Clarion side by side with the usual patterns, under the same hypercorn worker.

    .venv/bin/pip install -e '.[test]' fastapi
    .venv/bin/python -m bench.compare --out bench/results

For each backend (asyncio, trio) it runs, against a fresh server each time, pinned to
core 0 with the generator on core 1:

- ``rate`` 1,000 subscribers x 200 msg/s and x 20 msg/s;
- ``max``: the highest rate kept up (99% delivered, nothing lost, p99 under 100 ms);
- ``idle``: memory per idle subscribed connection, and hypercorn's own floor;

for Clarion, FastAPI's documented ``ConnectionManager`` (``bench/fastapi_app.py``) and,
as a reference that is not an ASGI server, the ``websockets`` library's own server with
``broadcast()`` (``bench/websockets_server.py``). Each number is the median of
``--runs`` runs. A backend publishes over HTTP and every subscriber is timed when the
generator reads it, unless ``--publisher websocket`` or ``--receipt kernel`` say
otherwise. It prints a Markdown table with the ratios, and writes every run as JSON lines
to ``--out``/runs.jsonl and the table to ``--out``/results.md (for another way of
measuring, ``runs-PUBLISHER-RECEIPT.jsonl`` and ``results-PUBLISHER-RECEIPT.md``).

It is not part of the test suite: it takes about half an hour.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from service.bench.report import Summary, median_summary
from service.bench.scenarios import Options, Target, run_idle, run_max, run_rate
from service.bench.server import ServerProcess, exit_on_sigterm, free_port, pin

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SERVERS = ("clarion", "fastapi", "websockets", "floor")


def _argv(server: str, backend: str, port: int, api_port: int) -> list[str]:
    python = sys.executable
    if server == "clarion":
        return [
            python,
            "-m",
            "service",
            "serve",
            "--backend",
            backend,
            "--bind",
            f"127.0.0.1:{port}",
        ]
    if server == "websockets":
        argv = [python, "-m", "bench.websockets_server", "--port", str(port)]
        return [*argv, "--http-port", str(api_port)]
    app = {"fastapi": "bench.fastapi_app:app", "floor": "bench.floor_app:app"}[server]
    return [python, "-m", "bench.serve", app, "--backend", backend, "--port", str(port)]


def _runs(
    server: str, backend: str, runs: int, measure: Callable[[Target], Summary]
) -> Iterator[Summary]:
    """Measure *runs* times, each against a fresh server."""
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            port = free_port()
            # The websockets reference serves a backend's POST /api/publish on a port of
            # its own; the ASGI servers on theirs.
            api_port = free_port() if server == "websockets" else port
            argv = _argv(server, backend, port, api_port)
            # Only Clarion answers GET /health with 200; the others answer something.
            ready = b"HTTP/1.1 200 " if server == "clarion" else b"HTTP/1.1 "
            process = ServerProcess(argv, port, 0, Path(folder) / "server.log", ready=ready)
            try:
                path = "/" if server == "websockets" else "/ws"
                yield measure(Target("127.0.0.1", port, path, process.stats, api_port))
            finally:
                process.stop()


def _rate_200(target: Target, options: Options) -> Summary:
    return run_rate(target, dataclasses.replace(options, scenario="rate", rate=200))[0]


def _rate_20(target: Target, options: Options) -> Summary:
    return run_rate(target, dataclasses.replace(options, scenario="rate", rate=20))[0]


def _max(target: Target, options: Options) -> Summary:
    steps = dataclasses.replace(options, scenario="max", start_rate=5, factor=1.5, seconds=4)
    best, tried = run_max(target, steps)
    return best or msgspec.structs.replace(tried[0], rate=0.0, delivered_per_s=0.0)


def _idle(target: Target, options: Options) -> Summary:
    return run_idle(target, dataclasses.replace(options, scenario="idle", connections=2000))


SCENARIOS: dict[str, Callable[[Target, Options], Summary]] = {
    "1000 x 200/s": _rate_200,
    "1000 x 20/s": _rate_20,
    "max, p99 < 100 ms": _max,
    "idle": _idle,
}


def _case(record: dict[str, object]) -> str:
    """The comparison case a JSON-lines record belongs to."""
    if "case" in record:
        return str(record["case"])
    if record["scenario"] == "rate":  # records written before cases were named
        return f"1000 x {record['rate']:.0f}/s"
    return "max, p99 < 100 ms" if record["scenario"] == "max" else "idle"


def _load(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [msgspec.json.decode(line) for line in path.read_text().splitlines() if line]


def _measure_all(args: argparse.Namespace, path: Path) -> None:
    """Run the chosen cases, replacing their earlier records in *path*."""
    records = _load(path)
    for backend in args.backends:
        for server in args.servers:
            if server == "websockets" and backend == "trio":
                continue  # an asyncio-only server
            options = Options(
                scenario="rate",
                backend=backend,
                server_name=server,
                seconds=args.seconds,
                warmup=2.0,
                drain=5.0,
                publisher=args.publisher,
                receipt=args.receipt,
            )
            for name, scenario in SCENARIOS.items():
                if name not in args.cases or (server == "floor" and name != "idle"):
                    continue  # the floor only accepts and waits
                runs = list(_runs(server, backend, args.runs, partial(scenario, options=options)))
                records = [
                    record
                    for record in records
                    if (record["backend"], record["server"], _case(record))
                    != (backend, server, name)
                ]
                records += [{**msgspec.to_builtins(run), "case": name} for run in runs]
                path.write_text("".join(msgspec.json.encode(r).decode() + "\n" for r in records))
                print(f"{backend:8} {server:10} {name:18} {_cell(name, median_summary(runs))}")


def _medians(records: list[dict[str, object]]) -> list[tuple[str, Summary]]:
    groups: dict[tuple[str, str, str], list[Summary]] = {}
    for record in records:
        key = (str(record["backend"]), str(record["server"]), _case(record))
        fields = {name: value for name, value in record.items() if name != "case"}
        groups.setdefault(key, []).append(msgspec.convert(fields, Summary))
    return [(case, median_summary(runs)) for (_, _, case), runs in groups.items()]


def _cell(name: str, summary: Summary) -> str:
    if name == "idle":
        return f"{summary.kib_per_connection:.1f} KiB"
    if name.startswith("max"):
        rate, delivered, p99 = summary.rate, summary.delivered_per_s, summary.p99_ms
        return f"{rate:,.0f} msg/s ({delivered:,.0f}/s, p99 {p99:.0f} ms)"
    return (
        f"{summary.delivered_per_s:,.0f}/s, p99 {summary.p99_ms:,.0f} ms, lost {summary.lost:,}, "
        f"{summary.msgs_per_frame:.1f} msg/frame, gen CPU {summary.generator_cpu:.0%}"
    )


def _table(results: list[tuple[str, Summary]], runs: int, how: str) -> str:
    """The Markdown table (and ratios) of the medians, measured *how*."""
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("hypercorn", "anyio", "trio", "msgspec", "fastapi", "starlette", "websockets")
    )
    lines = [
        f"Measured {datetime.date.today()} on {platform.machine()} Linux, {os.cpu_count()} cores "
        f"(server pinned to core 0, generator to core 1), Python {platform.python_version()}, "
        f"{versions}. Medians of {runs} runs. {how}",
        "",
        "| backend | server | 1,000 x 200 msg/s | 1,000 x 20 msg/s | max rate, p99 < 100 ms "
        "| KiB per idle connection |",
        "|---|---|---|---|---|---|",
    ]
    by_row: dict[tuple[str, str], dict[str, Summary]] = {}
    for name, summary in results:
        by_row.setdefault((summary.backend, summary.server), {})[name] = summary
    for (backend, server), row in by_row.items():
        cells = [backend, server]
        for name in ("1000 x 200/s", "1000 x 20/s", "max, p99 < 100 ms", "idle"):
            cells.append(_cell(name, row[name]) if name in row else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for backend in sorted({summary.backend for _, summary in results}):
        clarion = by_row.get((backend, "clarion"), {})
        fastapi = by_row.get((backend, "fastapi"), {})
        floor = by_row.get((backend, "floor"), {})
        if "max, p99 < 100 ms" in clarion and "max, p99 < 100 ms" in fastapi:
            ours, theirs = clarion["max, p99 < 100 ms"].rate, fastapi["max, p99 < 100 ms"].rate
            if theirs:
                lines.append(f"- {backend}: Clarion's max rate is {ours / theirs:.1f}x FastAPI's.")
            else:
                lines.append(f"- {backend}: FastAPI kept up with no rate tried (from 5 msg/s).")
        if "1000 x 200/s" in clarion and "1000 x 200/s" in fastapi:
            ours, theirs = clarion["1000 x 200/s"], fastapi["1000 x 200/s"]
            if theirs.delivered_per_s:
                ratio = ours.delivered_per_s / theirs.delivered_per_s
                lines.append(
                    f"- {backend}: at 1,000 x 200 msg/s Clarion delivers {ratio:.1f}x FastAPI."
                )
            else:
                lines.append(f"- {backend}: at 1,000 x 200 msg/s FastAPI delivered nothing.")
        if "idle" in clarion and "idle" in floor:
            above = clarion["idle"].kib_per_connection - floor["idle"].kib_per_connection
            lines.append(
                f"- {backend}: an idle Clarion connection costs {above:.1f} KiB above "
                "hypercorn's floor."
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    parser.add_argument("--cases", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--publisher", choices=("http", "websocket"), default="http")
    parser.add_argument("--receipt", choices=("read", "kernel"), default="read")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # One file of runs, and one table, per way of measuring.
    default = (args.publisher, args.receipt) == ("http", "read")
    suffix = "" if default else f"-{args.publisher}-{args.receipt}"
    path = args.out / f"runs{suffix}.jsonl"
    if not args.table_only:
        pin(0, 1)
        with exit_on_sigterm():
            _measure_all(args, path)
    how = (
        "**How:** "
        + (
            "a backend publishing with POST /api/publish, 4 requests in flight"
            if args.publisher == "http"
            else "a publisher over WebSocket, pipelined"
        )
        + "; latency from each message's scheduled time to "
        + (
            "its read by the generator, on every subscriber."
            if args.receipt == "read"
            else "the kernel's receipt, on 100 subscribers."
        )
    )
    table = _table(_medians(_load(path)), args.runs, how)
    (args.out / f"results{suffix}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
