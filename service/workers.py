"""Refuse to run the memory broker in several worker processes of one server.

With the memory broker each process has its own channels, so subscribers on one worker
would never see what is published on another. ``clarion serve --workers N`` refuses
that up front; this guard catches ``hypercorn -w N`` too: every worker of one hypercorn
master tries to bind the same abstract Unix socket, and only the first one can.
"""

from __future__ import annotations

import multiprocessing
import socket
import sys

from channels.errors import ConfigError

__all__ = ("claim_only_worker",)


def claim_only_worker() -> socket.socket | None:
    """Make sure no sibling worker process already runs a memory broker.

    Returns the socket that holds the claim (keep it open while serving), or None when
    this process is not a worker of a multi-process server or the platform has no
    abstract sockets.

    Raises:
        ConfigError: if a sibling worker holds the claim.
    """
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return None
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0clarion-memory-broker-{parent.pid}")
    except OSError:
        claim.close()
        raise ConfigError(
            "the memory broker keeps channels inside one process, and another worker of "
            "this server already runs one: run a single worker (hypercorn -w 1)"
        ) from None
    return claim
