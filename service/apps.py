"""The applications of the Pusher door on one node, each with its hub.

An app's channels are its own: each app but the default one has a hub of its own, whose
broker keys start with a prefix of its own (`service.settings.Settings.app_config`), so
that the same channel name in two apps is two channels, in memory as in Redis. The
default app (``default: true``) is the server's own hub: the channels of Clarion's
protocol, reached through both doors.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

from channels.hub import open_hub
from service.pusher.names import NAME_KINDS
from service.pusher.protocol import ENCODING, sender_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from contextlib import AbstractAsyncContextManager

    from channels.config import Config
    from channels.encoding import Encoding
    from channels.hub import Hub
    from service.settings import AppSettings, Settings

__all__ = (
    "App",
    "Apps",
    "open_apps",
    "open_server_hub",
)


class App:
    """One app on this node: its settings and its hub."""

    __slots__ = ("connections", "hub", "settings")

    def __init__(self, settings: AppSettings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.connections = 0
        """Its WebSocket connections on this node now (for ``max_connections``)."""


class Apps:
    """The apps of this node, found by key (WebSocket) or by id (HTTP API)."""

    def __init__(self, apps: list[App]) -> None:
        self._by_key = {app.settings.key: app for app in apps}
        self._by_id = {app.settings.id: app for app in apps}
        self.own_hubs = [app.hub for app in apps if not app.settings.default]
        """The hubs of the apps other than the default one."""

    def by_key(self, key: str) -> App | None:
        """The app whose key is *key*."""
        return self._by_key.get(key)

    def by_id(self, app_id: str) -> App | None:
        """The app whose id is *app_id*."""
        return self._by_id.get(app_id)

    def __iter__(self) -> Iterator[App]:
        return iter(self._by_id.values())


def open_server_hub(settings: Settings, encoding: Encoding) -> AbstractAsyncContextManager[Hub]:
    """Open the server's own hub (Clarion's protocol, with *encoding*). When the default
    app reaches it through the Pusher door too, its rules keep Pusher's private and
    presence names, and a Pusher message does not reach its sender."""
    if not any(app.default for app in settings.apps):
        return open_hub(settings, encoding)
    return _open_pusher_hub(settings, encoding)


def _open_pusher_hub(config: Config, encoding: Encoding) -> AbstractAsyncContextManager[Hub]:
    return open_hub(config, encoding, kinds=NAME_KINDS, sender_of=sender_of)


@asynccontextmanager
async def open_apps(settings: Settings, default: Hub) -> AsyncIterator[Apps]:
    """Open a hub for each app of *settings* but the default one, which is *default*;
    close them on leaving the block."""
    async with AsyncExitStack() as stack:
        apps = []
        for app in settings.apps:
            if app.default:
                hub = default
            else:
                hub = await stack.enter_async_context(
                    _open_pusher_hub(settings.app_config(app), ENCODING)
                )
            apps.append(App(app, hub))
        yield Apps(apps)
