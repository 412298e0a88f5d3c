"""The ``clarion`` command: ``serve`` and ``check``."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from channels.errors import ConfigError
from service.settings import ConfigSource, Settings, parse_bind

if TYPE_CHECKING:
    from service.bench.report import Summary
    from service.bench.scenarios import Options

__all__ = ("main",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarion", description="Clarion: a realtime broadcast server over WebSocket."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("CLARION_CONFIG") or None,
        help="YAML configuration (default: $CLARION_CONFIG, else the built-in default)",
    )
    serve.add_argument("--bind", metavar="HOST:PORT", help="overrides server.bind")
    serve.add_argument(
        "--backend",
        choices=("asyncio", "trio", "uvloop"),
        default="asyncio",
        help="hypercorn's worker: asyncio (default), trio, or asyncio on uvloop's event "
        "loop (needs the uvloop package: pip install -e '.[uvloop]' in a checkout)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        help="overrides server.log_level (default: info)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes; more than 1 needs a shared broker",
    )

    check = commands.add_parser("check", help="validate a configuration file and print it")
    check.add_argument("file", metavar="FILE")

    reload = commands.add_parser(
        "reload",
        help="make a running server read its configuration file again",
        description="PID: send SIGHUP to that clarion serve process (with --workers, the "
        "main one: it tells every worker). URL (http://HOST:PORT): call POST /api/reload "
        "on that node, with the API key in $CLARION_API_KEY, and print what it did.",
    )
    reload.add_argument("target", metavar="PID|URL")
    _add_bench(commands)
    _add_client_commands(commands)
    return parser


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from service.client.commands import DEFAULT_URL
    from service.client.http import DEFAULT_API_URL

    def api_option(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--api",
            default=os.environ.get("CLARION_API_URL") or DEFAULT_API_URL,
            metavar="URL",
            help=f"the node's HTTP address (default: $CLARION_API_URL or {DEFAULT_API_URL})",
        )

    def api_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(
            name,
            help=help_text,
            description=f"{help_text[0].upper()}{help_text[1:]}, through the server API "
            "(the key in $CLARION_API_KEY); print its answer as JSON. Exit status 1 if "
            "the server refuses.",
        )
        api_option(command)
        return command

    def connection(command: argparse.ArgumentParser) -> None:
        command.add_argument("--url", default=DEFAULT_URL, help=f"(default: {DEFAULT_URL})")
        command.add_argument(
            "--token",
            default=os.environ.get("CLARION_TOKEN") or None,
            help="a JSON Web Token for the connection (default: $CLARION_TOKEN)",
        )

    publish = commands.add_parser(
        "publish",
        help="publish a message over WebSocket",
        description="Publish DATA (JSON) on CHANNEL and print the reply's offset and "
        'epoch as JSON: {"offset":1,"epoch":"…"}. Exit status 1 if the server refuses.',
    )
    publish.add_argument("channel", metavar="CHANNEL", nargs="?")
    publish.add_argument("data", metavar="DATA", help="the message, as JSON")
    publish.add_argument(
        "--channels",
        metavar="A,B,...",
        help="publish on each of these channels at once, through the server API "
        "(POST /api/broadcast at --api, the key in $CLARION_API_KEY), instead of CHANNEL",
    )
    api_option(publish)
    connection(publish)
    publish.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="(default: 30)"
    )

    disconnect = api_command("disconnect", "close every connection of a user, on every node")
    disconnect.add_argument("user", metavar="USER")
    disconnect.add_argument("--code", type=int, help="the close code, 4003-4999 (default: 4003)")
    disconnect.add_argument("--reason", help="the close reason (default: disconnected)")
    disconnect.add_argument(
        "--for",
        dest="for_seconds",
        type=float,
        metavar="SECONDS",
        help="also refuse the user's new connections for this long",
    )
    unsubscribe = api_command("unsubscribe", "end a user's subscriptions to a channel")
    unsubscribe.add_argument("user", metavar="USER")
    unsubscribe.add_argument("channel", metavar="CHANNEL")
    history = api_command("history", "print a channel's kept messages")
    history.add_argument("channel", metavar="CHANNEL")
    history.add_argument("--since", type=int, metavar="OFFSET", help="those after OFFSET")
    history.add_argument("--limit", type=int, metavar="N", help="at most N")
    presence = api_command("presence", "print who is subscribed to a channel")
    presence.add_argument("channel", metavar="CHANNEL")
    presence.add_argument(
        "--count-only", action="store_true", help="only the numbers of clients and users"
    )
    listing = api_command("channels", "list the channels with subscribers in the cluster")
    listing.add_argument("--prefix", default="", help="only the names that start with it")
    listing.add_argument("--cursor", help="continue after the page this cursor ends")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N (default: 100)")

    subscribe = commands.add_parser(
        "subscribe",
        help="print the messages of channels as JSON lines",
        description="Print each message of the CHANNELs as one JSON line on stdout, "
        '{"channel":…,"offset":…,"epoch":…,"data":…}, reconnecting and recovering what '
        "was missed as needed; notices go to stderr. Stops on SIGINT or SIGTERM, or "
        "after --count messages (exit status 0); exit status 1 if the server refuses.",
    )
    subscribe.add_argument("channels", nargs="+", metavar="CHANNEL")
    connection(subscribe)
    subscribe.add_argument(
        "--since",
        metavar="OFFSET:EPOCH",
        help="with one CHANNEL: first replay the messages after this position",
    )
    subscribe.add_argument("--count", type=int, metavar="N", help="stop after N messages")


def _add_bench(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure throughput, latency and memory under load",
        description="rate: a fixed publish rate; max: the highest rate kept up with p99 "
        "under a bound; idle: memory per idle subscribed connection; hop: the latency "
        "the Redis hop adds (one node, then two nodes through Redis, at --rate); doors: "
        "at --rate, half the subscribers through the Pusher door, half through "
        "Clarion's protocol, on one channel. Starts a pinned clarion serve unless "
        "--target names a running server.",
    )
    bench.add_argument("scenario", choices=("rate", "max", "idle", "hop", "doors"))
    add = bench.add_argument
    add(
        "--backend", choices=("asyncio", "trio", "uvloop"), default="asyncio", help="server backend"
    )
    add("--config", type=Path, help="configuration for the server the bench starts")
    add("--target", metavar="URL", help="ws://HOST:PORT/PATH of a running server instead")
    add("--server-pid", type=int, metavar="PID", help="with --target: measure this process")
    add("--server-name", default="clarion", help="label for the server in the report")
    add("--subscribers", type=int, default=1000, metavar="N")
    add("--rate", type=float, default=200.0, help="messages per second (rate)")
    add("--seconds", type=float, default=10.0, help="measured seconds per run or step")
    add("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    add("--drain", type=float, default=10.0, help="seconds to wait for late messages")
    add("--payload", type=int, default=100, help="bytes of data per message")
    add("--p99-ms", type=float, default=100.0, help="latency bound (max)")
    add("--start-rate", type=float, default=20.0, help="first rate (max)")
    add("--factor", type=float, default=1.25, help="rate multiplier per step (max)")
    add("--connections", type=int, default=1000, metavar="K", help="idle connections")
    add("--runs", type=int, default=1, help="repeat and report the median")
    add("--server-core", type=int, default=0, help="CPU core for the server it starts")
    add("--generator-core", type=int, default=1, help="CPU core for the generator")
    add(
        "--receipt",
        choices=("read", "kernel"),
        default="read",
        help="latency ends when the generator read the message, on every subscriber "
        "(default), or when the kernel received it, on 100 of them (Linux)",
    )
    add(
        "--publisher",
        choices=("http", "websocket"),
        default="http",
        help="publish as a backend does, POST /api/publish on keep-alive connections "
        "(default), or with Clarion's publish request on one WebSocket, pipelined",
    )
    add("--in-flight", type=int, default=4, metavar="N", help="http: requests at once")
    add("--api-key", metavar="KEY", help="http: a key of the server's server.api_keys")
    add(
        "--publish-url",
        metavar="URL",
        help="http, with --target: http://HOST:PORT/api/publish when not on the target's port",
    )
    add("--json", action="store_true", help="JSON lines instead of a table")
    add("--histogram", type=Path, metavar="FILE.svg", help="write a latency histogram")
    add("--redis", metavar="URL", help="hop: this Redis instead of a private redis-server")
    add(
        "--pusher-key",
        default="bench",
        help="doors: the key of the server's default app (with --target or --config)",
    )


def _source(args: argparse.Namespace) -> ConfigSource:
    return ConfigSource(path=args.config, bind=args.bind, log_level=args.log_level)


def _serve_config(args: argparse.Namespace) -> Settings:
    config = _source(args).load()
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.backend == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError(
            "--backend uvloop needs the uvloop package: pip install -e '.[uvloop]' in a checkout"
        )
    if args.workers > 1 and config.broker.kind == "memory":
        raise ConfigError(
            f"--workers {args.workers}: the memory broker keeps channels inside one process, "
            "so several workers would each see only their own subscribers; run one worker "
            "until a shared broker is configured"
        )
    return config


#: What a median row of `clarion bench` holds as the worst run's, not the median.
_MOST_OF_ANY_RUN = "lost, dropped, unsent, refused, closed"


def _bench(args: argparse.Namespace) -> int:
    from array import array

    from service.bench.report import histogram_svg, median_summary, table
    from service.bench.scenarios import (
        Options,
        open_target,
        run_idle,
        run_max,
        run_rate,
    )

    options = Options(
        **{name: getattr(args, name) for name in Options.__dataclass_fields__ if name in args}
    )
    if options.scenario == "hop":
        return _bench_hop(options, args.redis, json=args.json)
    summaries = []
    latencies: array[int] = array("q")
    if options.scenario == "doors":
        return _bench_doors(options, json=args.json)
    for _ in range(options.runs):
        note = ""
        with open_target(options) as target:
            if options.scenario == "rate":
                summary, result = run_rate(target, options)
                latencies.extend(result.latencies_ns)
                steps = [summary]
            elif options.scenario == "max":
                best, steps = run_max(target, options)
                summary = best or steps[0]
                kept = "none" if best is None else f"{best.rate:,.0f} msg/s"
                note = f"highest step kept up: {kept}\n"
            else:
                summary = run_idle(target, options)
                steps = [summary]
        summaries.append(summary)
        if args.json:
            for step in steps:
                print(msgspec.json.encode(step).decode())
        else:
            print(table(steps))
            print(note)
    if options.runs > 1:
        median = median_summary(summaries)
        if not args.json:
            print(f"median of {options.runs} runs ({_MOST_OF_ANY_RUN}: the most of any run)")
        print(msgspec.json.encode(median).decode() if args.json else table([median]))
    if args.histogram is not None:
        title = f"{options.server_name} on {options.backend}: {options.scenario}"
        args.histogram.write_text(histogram_svg(latencies, title))
    return 0


def _bench_doors(options: Options, *, json: bool) -> int:
    from service.bench.report import median_summary, table
    from service.bench.scenarios import open_target, run_doors

    runs: list[list[Summary]] = []
    for _ in range(options.runs):
        with open_target(options) as target:
            summaries, _ = run_doors(target, options)
        runs.append(summaries)
        if json:
            for summary in summaries:
                print(msgspec.json.encode(summary).decode())
        else:
            print(table(summaries), end="\n\n")
    if options.runs > 1:
        medians = [median_summary(list(door)) for door in zip(*runs, strict=True)]
        print(
            "\n".join(msgspec.json.encode(m).decode() for m in medians) if json else table(medians)
        )
    return 0


def _bench_hop(options: Options, redis: str | None, *, json: bool) -> int:
    from service.bench.hop import added_latency, run_hop
    from service.bench.report import median_summary, table

    runs = []
    for _ in range(options.runs):
        steps, added = run_hop(options, redis)
        runs.append(steps)
        if json:
            for item in (*steps, added):
                print(msgspec.json.encode(item).decode())
        else:
            print(table(steps))
            print(added.describe(), end="\n\n")
    if options.runs > 1:
        medians = [median_summary([steps[index] for steps in runs]) for index in (0, 1)]
        added = added_latency(*medians)
        if json:
            for item in (*medians, added):
                print(msgspec.json.encode(item).decode())
        else:
            print(table(medians))
            print(f"medians of {options.runs} runs: {added.describe()}")
    return 0


def _reload(target: str) -> int:
    import signal
    import urllib.error
    import urllib.request

    if target.isdigit():
        os.kill(int(target), signal.SIGHUP)
        print(f"sent SIGHUP to {target}; the server logs what it did", file=sys.stderr)
        return 0
    request = urllib.request.Request(f"{target.rstrip('/')}/api/reload", b"", method="POST")
    request.add_header("authorization", f"Bearer {os.environ.get('CLARION_API_KEY', '')}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.read().decode())
            return 0
    except urllib.error.HTTPError as exc:
        print(f"clarion: error: {exc.code} {exc.read().decode()}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"clarion: error: {target}: {exc}", file=sys.stderr)
    return 1


_API_COMMANDS = ("disconnect", "unsubscribe", "history", "presence", "channels")


def _api_command(args: argparse.Namespace) -> int:
    """Run a server API command (``clarion disconnect`` and the like, ``publish
    --channels``) and print its answer."""
    import time

    import msgspec

    from service.client.commands import run_api

    key = os.environ.get("CLARION_API_KEY") or None
    match args.command:
        case "publish":
            if args.channel is not None:
                print("clarion: error: give CHANNEL or --channels, not both", file=sys.stderr)
                return 2
            try:
                data = msgspec.Raw(msgspec.json.encode(msgspec.json.decode(args.data)))
            except msgspec.DecodeError as exc:
                print(f"clarion: error: DATA is not JSON: {exc}", file=sys.stderr)
                return 2
            channels = [name for name in args.channels.split(",") if name]
            return run_api(args.api, key, "broadcast", {"channels": channels, "data": data})
        case "disconnect":
            if args.for_seconds is not None and not 0 < args.for_seconds < 1e10:
                print("clarion: error: --for: a number of seconds above 0", file=sys.stderr)
                return 2
            until = None if args.for_seconds is None else time.time() + args.for_seconds
            arguments = {"user": args.user, "code": args.code, "reason": args.reason}
            return run_api(args.api, key, "disconnect", {**arguments, "until": until})
        case "unsubscribe":
            return run_api(
                args.api, key, "unsubscribe", {"user": args.user, "channel": args.channel}
            )
        case "history":
            arguments = {"channel": args.channel, "since": args.since, "limit": args.limit}
            return run_api(args.api, key, "history", arguments)
        case "presence":
            method = "presence_stats" if args.count_only else "presence"
            return run_api(args.api, key, method, {"channel": args.channel})
        case _:
            arguments = {"prefix": args.prefix, "cursor": args.cursor, "limit": args.limit}
            return run_api(args.api, key, "channels", arguments)


def _client_command(args: argparse.Namespace) -> int:
    from service.client.commands import parse_since, run_publish, run_subscribe
    from service.client.websocket import parse_url

    try:
        parse_url(args.url)
    except ValueError as exc:
        print(f"clarion: error: --url: {exc}", file=sys.stderr)
        return 2
    if args.command == "publish":
        if args.channel is None:
            print("clarion: error: publish needs CHANNEL (or --channels)", file=sys.stderr)
            return 2
        return run_publish(args.url, args.token, args.channel, args.data, args.timeout)
    since = None
    if args.since is not None:
        if len(args.channels) != 1:
            print("clarion: error: --since needs exactly one CHANNEL", file=sys.stderr)
            return 2
        try:
            since = parse_since(args.since)
        except ValueError as exc:
            print(f"clarion: error: --since: {exc}", file=sys.stderr)
            return 2
    if args.count is not None and args.count < 1:
        print("clarion: error: --count must be at least 1", file=sys.stderr)
        return 2
    return run_subscribe(args.url, args.token, args.channels, since, args.count)


def _read_key_files(config: Settings) -> Settings:
    """Read the key files *config* names, so that a bad one is reported before serving.

    Raises:
        ConfigError: if a key file cannot be read or holds no usable key.
    """
    if config.auth is not None and config.auth.enabled:
        from service.auth import Authenticator

        Authenticator(config.auth)
    return config


def main(argv: list[str] | None = None) -> int:
    """Run the ``clarion`` command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from service.bench.server import exit_on_sigterm

        with exit_on_sigterm():
            try:
                return _bench(args)
            except (RuntimeError, TimeoutError) as exc:  # the server's, or the run's
                print(f"clarion bench: error: {exc}", file=sys.stderr)
                return 1
    if args.command == "reload":
        return _reload(args.target)
    if args.command == "publish" and args.channels is not None:
        return _api_command(args)
    if args.command in ("publish", "subscribe"):
        return _client_command(args)
    if args.command in _API_COMMANDS:
        return _api_command(args)
    try:
        if args.command == "check":
            config = _read_key_files(Settings.load(args.file))
            print(config.dump(), end="")
            print(f"{args.file}: OK", file=sys.stderr)
            return 0
        config = _read_key_files(_serve_config(args))
    except ConfigError as exc:
        print(f"clarion: error: {exc}", file=sys.stderr)
        return 2

    from service.app import Clarion
    from service.logs import configure_logging
    from service.runner import hypercorn_config, run, run_workers
    from service.sockets import BindError, bind_sockets

    configure_logging(config.server.log_level, config.server.log_format)
    try:
        sockets = bind_sockets(hypercorn_config(config))
    except BindError as exc:
        setting = "server.bind" if args.bind is None else "--bind"
        print(f"clarion: error: {setting}: {exc}", file=sys.stderr)
        return 2
    host, port = parse_bind(config.server.bind)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    logging.getLogger("clarion").info(
        "serving ws://%s%s on %s", netloc, config.server.websocket_path, args.backend
    )
    source = _source(args)
    if args.workers > 1:
        return run_workers(config, source, args.backend, args.workers, sockets)
    run(Clarion(config, source), args.backend, sockets)
    return 0
