"""An `channels.encoding.Encoding` for the engine's tests: readable text, not JSON."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from channels.brokers import Event
    from channels.errors import ChannelsError
    from channels.publication import ClientInfo, Publication

__all__ = ("TextEncoding",)


class TextEncoding:
    """Encodes a publication as ``channel:offset:data`` (and counts those calls), an
    event as ``join:channel:client``, an ended subscription as ``ended:channel:code``, a
    gap as ``gap:channel:first-last`` and a restart as ``restart:channel:epoch``."""

    def __init__(self, *, batches: bool = True) -> None:
        self.calls = 0
        self.batches = batches

    def message(self, publication: Publication) -> bytes:
        self.calls += 1
        data = bytes(publication.data).decode()
        return f"{publication.channel}:{publication.offset}:{data}".encode()

    def event(self, channel: str, event: Event, client: ClientInfo) -> bytes:
        return f"{event}:{channel}:{client.client}".encode()

    def ended(self, channel: str, error: ChannelsError) -> bytes:
        return f"ended:{channel}:{error.code}".encode()

    def gap(self, channel: str, first: int, last: int) -> bytes:
        return f"gap:{channel}:{first}-{last}".encode()

    def restart(self, channel: str, epoch: str) -> bytes:
        return f"restart:{channel}:{epoch}".encode()
