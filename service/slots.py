"""Connection slots: what ``server.max_connections`` and ``max_connections_per_address``
count.

A slot is held by a WebSocket connection from its handshake to its end, and by an HTTP
request from the moment its headers arrived until it is answered: a request whose body
never finishes holds one until ``server.handshake_timeout_seconds`` ends it, so such
requests cannot pile up beyond the limits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.errors import AddressFull, NodeFull

if TYPE_CHECKING:
    from service.settings import ServerSettings

__all__ = ("Slot", "Slots")


class Slots:
    """The connection slots of one node, in all and per client address."""

    def __init__(self) -> None:
        self.held = 0
        """Slots held now: WebSocket connections and HTTP requests in progress."""
        self._per_address: dict[str, int] = {}

    def hold(self, address: str, server: ServerSettings, *, checked: bool = True) -> Slot:
        """Hold a slot for a connection from *address*, for a ``with`` block.

        Args:
            address: the client's IP address.
            server: the limits that apply now.
            checked: False for requests that are served even on a full node (probes,
                callers with an API key): they hold a slot, but are never refused one.

        Raises:
            NodeFull: the node holds ``server.max_connections`` slots.
            AddressFull: *address* holds ``server.max_connections_per_address``.
        """
        held = self._per_address.get(address, 0)
        if checked:
            if self.held >= server.max_connections:
                raise NodeFull(f"this node holds {server.max_connections} connections")
            per_address = server.max_connections_per_address
            if per_address is not None and held >= per_address:
                raise AddressFull(f"{per_address} connections from your address")
        self.held += 1
        self._per_address[address] = held + 1
        return Slot(self, address)

    def release(self, address: str) -> None:
        """Give back a slot that *address* held."""
        self.held -= 1
        left = self._per_address.pop(address) - 1
        if left:
            self._per_address[address] = left


class Slot:
    """One held slot: given back when its ``with`` block ends. (A class rather than a
    generator-based context manager: an idle connection holds one.)"""

    __slots__ = ("_address", "_slots")

    def __init__(self, slots: Slots, address: str) -> None:
        self._slots = slots
        self._address = address

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        self._slots.release(self._address)
