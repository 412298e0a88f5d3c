"""The generator's readiness loop: which sockets have something to read."""

from __future__ import annotations

import select
import selectors
from typing import Protocol

__all__ = ("Poller",)


class _Readable(Protocol):
    def fileno(self) -> int: ...


class Poller:
    """Sockets to read, each with its data: epoll where there is one (it spares the
    generator a key object per ready socket), else the selector module's best."""

    def __init__(self) -> None:
        self._data: dict[int, object] = {}
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._selector = selectors.DefaultSelector() if self._epoll is None else None

    def register(self, sock: _Readable, data: object) -> None:
        fd = sock.fileno()
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        elif self._selector is not None:
            self._selector.register(fd, selectors.EVENT_READ)
        self._data[fd] = data

    def unregister(self, sock: _Readable) -> None:
        fd = sock.fileno()
        if self._epoll is not None:
            self._epoll.unregister(fd)
        elif self._selector is not None:
            self._selector.unregister(fd)
        del self._data[fd]

    def ready(self, timeout: float) -> list[tuple[object, int]]:
        """What is ready to read within *timeout* seconds: each socket's data and fd."""
        data = self._data
        if self._epoll is not None:
            return [(data[fd], fd) for fd, _ in self._epoll.poll(timeout)]
        assert self._selector is not None
        ready = self._selector.select(timeout)
        return [(data[key.fd], key.fd) for key, _ in ready]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        elif self._selector is not None:
            self._selector.close()
