"""Serve an ASGI app with hypercorn's trio or asyncio worker in this one process.

``python -m bench.serve MODULE:APP --backend trio --port 8000``: the same worker code
``clarion serve`` runs, so that a comparison measures the apps and not the launchers.
"""

from __future__ import annotations

import argparse
import importlib
import signal
from functools import partial

import anyio
import hypercorn.asyncio
import hypercorn.trio
from hypercorn.config import Config


async def _serve(app: object, config: Config, backend: str) -> None:
    async def on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    module = hypercorn.trio if backend == "trio" else hypercorn.asyncio
    await module.serve(app, config, shutdown_trigger=on_signal)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("app", help="MODULE:ATTRIBUTE")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    module, _, attribute = args.app.partition(":")
    app = getattr(importlib.import_module(module), attribute)
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.graceful_timeout = 1.0
    anyio.run(partial(_serve, app, config, args.backend), backend=args.backend)


if __name__ == "__main__":
    main()
