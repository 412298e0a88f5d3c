"""A broker's receiver for the engine's tests: it keeps what it is handed."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from channels.brokers import Event
    from channels.control import Command
    from channels.publication import ClientInfo, Publication

__all__ = ("Recorder",)


class Recorder:
    """A receiver that keeps what it was delivered."""

    def __init__(self) -> None:
        self.delivered: list[Publication] = []
        self.events: list[tuple[str, Event, ClientInfo]] = []
        self.commands: list[Command] = []
        self.occupancy_changes: list[tuple[str, bool]] = []
        self.departures: list[tuple[str, ClientInfo]] = []

    def deliver(self, publication: Publication) -> None:
        self.delivered.append(publication)

    def lost(self, channel: str, first: int, last: int) -> None:
        raise AssertionError("the memory broker loses nothing")

    def restarted(self, channel: str, epoch: str) -> None:
        raise AssertionError("the memory broker restarts no stream it holds")

    def event(self, channel: str, event: Event, client: ClientInfo) -> None:
        self.events.append((channel, event, client))

    def command(self, command: Command) -> None:
        self.commands.append(command)

    def departed(self, channel: str, client: ClientInfo) -> None:
        self.departures.append((channel, client))

    def occupancy(self, channel: str, occupied: bool) -> None:
        self.occupancy_changes.append((channel, occupied))
