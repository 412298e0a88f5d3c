"""The applications of the Pusher door on one node, each with its hub.

An app's channels are its own: each app but the default one has a hub of its own, whose
broker keys start with a prefix of its own (`service.settings.Settings.app_config`), so
that the same channel name in two apps is two channels, in memory as in Redis. The
default app (``default: true``) is the server's own hub: the channels of Clarion's
protocol, reached through both doors.

A reload (`Apps.reconfigure`) adds, changes and removes apps without touching the
others: an added app gets its hub, a removed one's hub closes (its clients are told to
reconnect, and find it gone), and a changed one keeps its hub and its connections, with
its new settings and channel rules from then on.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Protocol

import anyio
import msgspec

from channels.hub import open_hub
from service.pusher.names import NAME_KINDS
from service.pusher.protocol import ENCODING, sender_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    from anyio.abc import TaskGroup, TaskStatus

    from channels.activity import Observer
    from channels.config import Config
    from channels.encoding import Encoding
    from channels.hub import Hub
    from service.settings import AppSettings, Settings

__all__ = ("Aborting", "App", "Apps", "open_apps", "open_server_hub")


class Aborting(Protocol):
    """A connection's socket that can be cut off (`service.framewriter`'s writers)."""

    def abort(self) -> None: ...


class App:
    """One app on this node: its settings (as a reload leaves them) and its hub."""

    __slots__ = ("_refilled", "_tokens", "connections", "hub", "settings", "stopping", "writers")

    def __init__(self, settings: AppSettings, hub: Hub) -> None:
        self.settings = settings
        self.hub = hub
        self.connections = 0
        """Its WebSocket connections on this node now (for ``max_connections``)."""
        self.writers: set[Aborting] = set()
        """The sockets of its connections, cut off if its hub closes and they outlast
        the grace (clients that stopped reading)."""
        self.stopping = anyio.Event()
        """Set when the app is removed: its hub closes."""
        self._tokens = settings.backend_events_per_second or 0.0
        self._refilled = anyio.current_time()

    def take_backend_events(self, count: int) -> bool:
        """Count *count* events of the backend against ``backend_events_per_second``;
        return False (counting none) when they are over it."""
        rate = self.settings.backend_events_per_second
        if rate is None:
            return True
        now = anyio.current_time()
        elapsed, self._refilled = now - self._refilled, now
        self._tokens = min(max(rate, 1.0), self._tokens + elapsed * rate)
        if self._tokens < count:
            return False
        self._tokens -= count
        return True


class Apps:
    """The apps of this node, found by key (WebSocket) or by id (HTTP API)."""

    def __init__(
        self,
        settings: Settings,
        default: Hub,
        tg: TaskGroup,
        observer_of: Callable[[str], Observer | None],
    ) -> None:
        self._settings = settings
        self._default = default
        self._tg = tg
        self._observer_of = observer_of
        self._by_id: dict[str, App] = {}
        self._by_key: dict[str, App] = {}

    @property
    def own_hubs(self) -> list[Hub]:
        """The hubs of the apps other than the default one."""
        return [app.hub for app in self._by_id.values() if not app.settings.default]

    def by_key(self, key: str) -> App | None:
        """The app whose key is *key*."""
        return self._by_key.get(key)

    def by_id(self, app_id: str) -> App | None:
        """The app whose id is *app_id*."""
        return self._by_id.get(app_id)

    def __iter__(self) -> Iterator[App]:
        return iter(list(self._by_id.values()))

    async def start(self, settings: AppSettings) -> App:
        """Start *settings*' app: its hub (the server's own, for the default app)."""
        if settings.default:
            app = App(settings, self._default)
            self._register(app)
            return app
        started: App = await self._tg.start(partial(self._run, settings))
        return started

    async def reconfigure(self, new: Settings) -> list[str]:
        """Apply *new*'s apps: start the added ones, close the removed ones, give the
        changed ones their settings and rules. Return what needs a restart, and stays
        as it runs: an app's webhooks, and which app is the default one (the server's
        own hub is made for it at startup).
        """
        self._settings = new
        restart_needed = []
        wanted = {app.id: app for app in new.apps}
        defaults = {app_id for app_id, app in self._by_id.items() if app.settings.default}
        changed = defaults ^ {app.id for app in new.apps if app.default}
        if changed:
            restart_needed.append("apps (the default app)")
            for app_id in changed:  # stays as it runs, or absent
                running = self._by_id.get(app_id)
                if running is None:
                    wanted.pop(app_id, None)
                else:
                    wanted[app_id] = running.settings
        for app_id, app in list(self._by_id.items()):
            if app_id not in wanted:
                self.stop(app)
        added = []
        for settings in wanted.values():
            running = self._by_id.get(settings.id)
            if running is None:
                if settings.webhooks:
                    restart_needed.append(f"apps[{settings.id}].webhooks")
                    settings = msgspec.structs.replace(settings, webhooks=[])
                added.append(settings)
                continue
            if settings.webhooks != running.settings.webhooks:
                restart_needed.append(f"apps[{settings.id}].webhooks")
                settings = msgspec.structs.replace(settings, webhooks=running.settings.webhooks)
            running.settings = settings
            if not settings.default:
                running.hub.reconfigure(new.app_config(settings))
        # Keys may move between apps: the index is made again, whole.
        self._by_key = {app.settings.key: app for app in self._by_id.values()}
        for settings in added:
            await self.start(settings)
        return restart_needed

    def _register(self, app: App) -> None:
        self._by_id[app.settings.id] = app
        self._by_key[app.settings.key] = app

    def stop(self, app: App) -> None:
        """Close *app*'s hub: its clients are closed (4200) once their messages are sent."""
        del self._by_id[app.settings.id]
        if self._by_key.get(app.settings.key) is app:
            del self._by_key[app.settings.key]
        app.stopping.set()

    async def _run(self, settings: AppSettings, *, task_status: TaskStatus[App]) -> None:
        config = self._settings.app_config(settings)
        async with _open_pusher_hub(config, ENCODING) as hub:
            hub.observer = self._observer_of(settings.id)
            app = App(settings, hub)
            self._register(app)
            task_status.started(app)
            await app.stopping.wait()
            hub.close()
            with anyio.move_on_after(self._settings.server.shutdown_grace_seconds):
                await hub.wait_no_connections()
            if hub.connection_count:  # clients that stopped reading: cut off
                for frames in list(app.writers):
                    frames.abort()


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
async def open_apps(
    settings: Settings, default: Hub, observer_of: Callable[[str], Observer | None]
) -> AsyncIterator[Apps]:
    """Run the apps of *settings* for the block: a hub for each but the default one,
    which is *default*. *observer_of* gives an app's webhooks (by its id), if any.
    Leaving the block closes them."""
    async with anyio.create_task_group() as tg:
        apps = Apps(settings, default, tg, observer_of)
        try:
            for each in settings.apps:
                await apps.start(each)
            yield apps
        finally:
            for app in apps:
                if not app.settings.default:
                    apps.stop(app)
