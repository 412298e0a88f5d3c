"""The "connection closed" lines an in-process server logs, for a test to wait on.

A session logs that line (``service.session``) once it has counted its connection's end:
waiting for it is waiting for the count, with no polling.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ("ClosedConnections", "watch_closed_connections")


class ClosedConnections(logging.Handler):
    """Keeps the fields of each "connection closed" line (``code``, ``reason``...)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.closed: list[dict[str, Any]] = []
        self._arrived = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "connection closed":
            self.closed.append(dict(getattr(record, "fields", {})))
            self._arrived.set()
            self._arrived = anyio.Event()

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """Return the lines' fields once *count* connections were logged as closed."""
        while len(self.closed) < count:
            await self._arrived.wait()
        return self.closed


@contextmanager
def watch_closed_connections() -> Iterator[ClosedConnections]:
    """Collect the "connection closed" lines of the ``clarion`` logger in the block
    (in a running event loop: the server's, which logs them)."""
    logger = logging.getLogger("clarion")
    handler = ClosedConnections()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
