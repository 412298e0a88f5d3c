"""The ``clarion`` command: ``serve`` and ``check``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import msgspec

from channels.config import Config, dump_config, load_config, parse_bind
from channels.errors import ConfigError

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
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop hypercorn runs on (default: asyncio)",
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
    return parser


def _serve_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    if args.bind is not None:
        try:
            parse_bind(args.bind)
        except ValueError as exc:
            raise ConfigError(f"--bind: {exc}") from None
        server = msgspec.structs.replace(config.server, bind=args.bind)
        config = msgspec.structs.replace(config, server=server)
    if args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if args.workers > 1 and config.broker.kind == "memory":
        raise ConfigError(
            f"--workers {args.workers}: the memory broker keeps channels inside one process, "
            "so several workers would each see only their own subscribers; run one worker "
            "until a shared broker is configured"
        )
    return config


def main(argv: list[str] | None = None) -> int:
    """Run the ``clarion`` command line; return the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            print(dump_config(load_config(args.file)), end="")
            print(f"{args.file}: OK", file=sys.stderr)
            return 0
        config = _serve_config(args)
    except ConfigError as exc:
        print(f"clarion: error: {exc}", file=sys.stderr)
        return 2

    from service.app import Clarion
    from service.runner import run

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    host, port = parse_bind(config.server.bind)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    logging.getLogger("clarion").info(
        "serving ws://%s%s on %s", netloc, config.server.websocket_path, args.backend
    )
    run(Clarion(config), args.backend)
    return 0
