"""The ASGI application: its lifespan (the hub), reload and drain, and the dispatch of
WebSocket handshakes and HTTP requests.

Who is let in is decided in `service.admission`; the HTTP routes and their handlers are
in `service.httpapi`; a WebSocket connection is served by `service.session`.
"""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from channels.activity import Activity
from channels.errors import ChannelsError, ConfigError, ServerClosing
from service.admission import address, identify, read_body, served_when_full
from service.apps import open_apps, open_server_hub
from service.auth import SUBPROTOCOL, Authenticator
from service.datastructures import Headers, QueryParams, URLPath, route_path
from service.errors import (
    AddressFull,
    Banned,
    InvalidToken,
    MethodNotAllowed,
    NodeFull,
    NotStarted,
    OriginNotAllowed,
    ProtocolError,
    RequestTimeout,
    RequestTooLarge,
    RouteNotFound,
    TokenExpired,
    Unauthenticated,
    Unauthorized,
    UpgradeRequired,
)
from service.framewriter import SocketFrameWriter, TransportFrameWriter, open_frame_writer
from service.httpapi import JSON_HEADERS, Answer, Request, routes
from service.keepalive import open_keepalive
from service.logs import fields, peer, reconfigure_logging
from service.metrics import NodeCollector, NodeCounters, node_registry
from service.protocol import ReloadReply, WireEncoding, encode_error
from service.pusher.handshake import PATH_PREFIX, serve_pusher
from service.pusher.httpapi import answer as pusher_api, is_pusher_path
from service.pusher.webhooks import pusher_endpoint
from service.responses import Response
from service.serverapi import ServerAPI
from service.session import ClarionDoor, run_session
from service.settings import ConfigSource, Settings
from service.slots import Slots
from service.webhooks import Webhooks, clarion_endpoint, open_webhooks
from service.websocket import WebSocket
from service.workers import claim_only_worker
from service.wsstream import install_closing_stream

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from channels.activity import Observer
    from channels.hub import Hub
    from service.apps import Apps
    from service.auth import Identity
    from service.fastlane import Lane
    from service.keepalive import KeepAlive
    from service.settings import ServerSettings
    from service.types import Receive, Scope, Send

__all__ = ("Clarion", "NoMatchFound", "RESTART_ONLY", "create_app")

logger = logging.getLogger("clarion")

#: The refusals a ``connection_refused`` webhook reports: the connection's credentials.
_TOKEN_REFUSALS: Final = (Unauthenticated, InvalidToken, TokenExpired, Banned)

#: Server settings that hypercorn took at startup: only a restart changes them.
RESTART_ONLY: Final = (
    "bind",
    "listen_backlog",
    "websocket_path",
    "max_request_bytes",
    "handshake_timeout_seconds",
    "write_timeout_seconds",
    "shutdown_grace_seconds",
)


class NoMatchFound(Exception):
    """Raised by `Clarion.url_path_for` for a route name that does not exist."""

    def __init__(self, name: str, path_params: dict[str, Any]) -> None:
        params = ", ".join(path_params)
        super().__init__(f'No route exists for name "{name}" and params "{params}".')


class Clarion:
    """The Clarion ASGI application for one node.

    Routes: the WebSocket endpoint at ``server.websocket_path``, the HTTP API
    (``POST /api/publish``, ``POST /api/broadcast``, ``GET /api/history``,
    ``GET /api/presence``, ``POST /api/reload``, ``GET /api/stats``), ``GET /health``
    (liveness), ``GET /ready`` (readiness), ``GET /metrics`` (Prometheus), and the
    dashboard at ``GET /`` with the browser client at ``GET /client.js``; everything
    else is a JSON 404. The hub lives in the lifespan.
    """

    def __init__(self, config: Settings, source: ConfigSource | None = None) -> None:
        """Build the app for the node configured by *config*, read from *source* (which
        `reload` reads again; without one, the app cannot reload)."""
        self.config = config
        self.source = source
        self.auth = _authenticator(config)
        self._slots = Slots()
        self._lane: tuple[Lane, int] | None = None
        self._door: tuple[ServerSettings, ClarionDoor] | None = None
        self._frame_writers: set[TransportFrameWriter | SocketFrameWriter] = set()
        """The sockets of the connections in the hub, cut off if a drain's grace ends."""
        self.hub: Hub | None = None
        self.apps: Apps | None = None
        """The apps of the Pusher door, while the hub runs (see `service.apps`)."""
        self.keepalive: KeepAlive | None = None
        """What pings quiet connections, while the hub runs (see `service.keepalive`)."""
        self._current_auth = lambda: self.auth  # one function for every session
        self._reload_lock: anyio.Lock | None = None
        self.started = 0.0
        """When the hub started (`anyio.current_time`), for the uptime in the stats."""
        self.counters = NodeCounters()
        """Connections, disconnects and errors, for the metrics."""
        self.metrics = node_registry(NodeCollector(self.counters, lambda: self.hub, self._app_hubs))
        """The node's Prometheus registry, served at ``/metrics``."""
        self.api = ServerAPI(self)
        """The server API, for code in this process (see `service.serverapi`)."""
        self._observe: Observer | None = None
        """Where the webhooks hear of what happens, while they run."""
        self._http_routes = routes()
        self._routes = {
            "websocket": URLPath(config.server.websocket_path, "websocket"),
            **{route.name: URLPath(route.path, "http") for route in self._http_routes.values()},
        }

    def _app_hubs(self) -> list[tuple[str, Hub]]:
        """The Pusher door's apps now: each one's id and hub."""
        return [] if self.apps is None else [(app.settings.id, app.hub) for app in self.apps]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        if scope["type"] == "http":
            await self._http(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "websocket":
            return
        # A WebSocket's handshake and session, here rather than in a method of their own:
        # a connection holds this frame for as long as it lasts, and a coroutine less is
        # about 250 bytes less for each idle connection.
        ws = WebSocket(scope, receive, send)
        # First: close frames for protocol errors and 1009, and no second answer to a
        # handshake whose client sent bytes before the first (see service.wsstream).
        await install_closing_stream(send)
        hub = self.hub
        path = route_path(ws.scope)
        if path.startswith(PATH_PREFIX) and self.config.apps:
            await serve_pusher(
                ws,
                send,
                key=path.removeprefix(PATH_PREFIX),
                apps=self.apps,
                server=self.config.server,
                slots=self._slots,
                counters=self.counters,
                writers=self._frame_writers,
                keepalive=self.keepalive,
                auth_required=self.config.auth is not None and self.config.auth.required,
            )
            return
        if path != self.config.server.websocket_path:
            error: ProtocolError | ChannelsError = RouteNotFound(
                f"no WebSocket endpoint at {path!r}"
            )
        elif hub is None:
            error = NotStarted()
        elif hub.closing:
            error = ServerClosing()
        else:
            try:
                server = self.config.server
                with self._slots.hold(address(ws.scope), server):
                    identity = identify(ws.scope, self.auth, server)
                    _check_not_banned(hub, identity)
                    offered = ws.scope.get("subprotocols", [])
                    frames = open_frame_writer(send)
                    writers = self._frame_writers
                    if frames is not None:
                        writers.add(frames)
                    try:
                        await run_session(
                            ws,
                            hub,
                            server,
                            door=self._clarion_door(server),
                            identity=identity,
                            subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None,
                            frames=frames,
                            counters=self.counters,
                            writers=writers,
                            keepalive=self.keepalive,
                        )
                    finally:
                        if frames is not None:
                            writers.discard(frames)
            except (
                ServerClosing,
                NodeFull,
                AddressFull,
                Unauthenticated,
                InvalidToken,
                TokenExpired,
                OriginNotAllowed,
                Banned,
            ) as exc:
                error = exc
            else:
                return
        self.counters.refused[error.code] += 1
        if self._observe is not None and isinstance(error, _TOKEN_REFUSALS):
            refused = Activity(name="connection_refused", code=error.code, message=str(error))
            self._observe(refused)
        extra = fields(client=peer(ws.client), code=error.code, reason=str(error))
        logger.info("handshake refused", extra=extra)
        body = _error_body(error)
        await ws.send_denial_response(Response(error.http_status or 400, body, JSON_HEADERS))

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        """Return the path of the route called *name*: ``websocket``, or a route of
        `service.httpapi.routes` (``publish``, ``presence``, ``reload``, ``stats``,
        ``health``, ``ready``, ``metrics``, ``dashboard``, ``client``...).

        Raises:
            NoMatchFound: for any other name, or with path parameters (no route has any).
        """
        if name not in self._routes or path_params:
            raise NoMatchFound(name, path_params)
        return self._routes[name]

    async def drain(self) -> None:
        """Close every connection with 1001 once its queued messages are sent.

        New connections are refused with HTTP 503. Waits at most
        ``server.shutdown_grace_seconds`` for the connections to end; the sockets of those
        still in the hub then (clients that stopped reading) are closed at once.
        """
        if self.hub is None:
            return
        hubs = [self.hub, *(() if self.apps is None else self.apps.own_hubs)]
        first = not self.hub.closing
        for hub in hubs:
            hub.close()
        grace = self.config.server.shutdown_grace_seconds
        connections = sum(hub.connection_count for hub in hubs)
        with anyio.move_on_after(grace):
            for hub in hubs:
                await hub.wait_no_connections()
        if first:
            left = sum(hub.connection_count for hub in hubs)
            extra = fields(connections=connections, left=left, grace_seconds=grace)
            logger.log(logging.WARNING if left else logging.INFO, "drained", extra=extra)
        for frames in list(self._frame_writers):
            frames.abort()

    async def reload(self) -> ReloadReply:
        """Read the configuration from `source` again and apply it, without dropping a
        connection.

        Channel rules, auth and limits apply from now on (see `Hub.reconfigure` for the
        subscriptions they end); a connection keeps the per-connection limits it started
        with. What hypercorn or the broker took at startup (`RESTART_ONLY`, and the
        ``broker`` section) keeps its running value, and is reported.

        Raises:
            ConfigError: if the configuration is invalid, or the app was given its
                configuration directly (no `source`); the running one is kept.
        """
        if self._reload_lock is None:
            self._reload_lock = anyio.Lock()
        async with self._reload_lock:  # one at a time, so that the last file read wins
            return await self._reload()

    async def _reload(self) -> ReloadReply:
        source = self.source
        try:
            if source is None:
                raise ConfigError("this app was given its configuration, not a file to reload")
            new = await anyio.to_thread.run_sync(source.load)
            auth = _authenticator(new)  # reads key files: a bad one fails the reload
        except ConfigError as exc:
            logger.error("reload refused, the running configuration stays: %s", exc)
            raise
        old = self.config
        restart_needed = [
            f"server.{name}"
            for name in RESTART_ONLY
            if getattr(new.server, name) != getattr(old.server, name)
        ]
        if new.broker != old.broker:
            restart_needed.append("broker")
        if new.webhooks != old.webhooks:
            restart_needed.append("webhooks")
        kept = {name: getattr(old.server, name) for name in RESTART_ONLY}
        server = msgspec.structs.replace(new.server, **kept)
        config = msgspec.structs.replace(
            new, server=server, broker=old.broker, webhooks=old.webhooks
        )
        if self.apps is not None:
            restart_needed += await self.apps.reconfigure(config)
            running = [app.settings for app in self.apps]
            config = msgspec.structs.replace(config, apps=running)
        self.config = config
        self.auth = auth
        reconfigure_logging(server.log_level, server.log_format)
        ended = 0 if self.hub is None else self.hub.reconfigure(self.config)
        logger.info(
            "configuration reloaded from %s: %d subscriptions ended",
            source.path or "the built-in default",
            ended,
        )
        if restart_needed:
            logger.warning(
                "changed settings that apply only after a restart: %s", ", ".join(restart_needed)
            )
        return ReloadReply(ended=ended, restart_needed=restart_needed)

    @asynccontextmanager
    async def lifespan(self, host: object = None) -> AsyncIterator[None]:
        """Run the app's hub (its broker, its flusher) for the block; on leaving it, drain
        the clients (as `drain`) and stop.

        The ASGI lifespan does this when the app is served alone. A Starlette or FastAPI
        app does not pass its lifespan on to the apps it mounts: give it this one,
        ``FastAPI(lifespan=clarion.lifespan)`` (*host* is the host app, unused), or
        enter ``clarion.lifespan()`` in the host's own lifespan.

        Raises:
            ConfigError: with the memory broker, if another worker process of the same
                server runs one (see `service.workers`).
        """
        claim = claim_only_worker() if self.config.broker.kind == "memory" else None
        outcomes = self.counters.webhook_events
        config = self.config
        own = [clarion_endpoint(settings, outcomes) for settings in config.webhooks]
        by_app = {
            app.id: [pusher_endpoint(app, settings, outcomes) for settings in app.webhooks]
            for app in config.apps
        }
        default_app = [app.id for app in config.apps if app.default]
        # The server's own hub is the default app's too: both kinds hear of its events.
        own += [endpoint for app_id in default_app for endpoint in by_app.pop(app_id)]
        endpoints = [*own, *(endpoint for each in by_app.values() for endpoint in each)]

        def observer_of(app_id: str) -> Observer | None:
            found = by_app.get(app_id)
            return Webhooks(found).observe if found else None

        try:
            async with (
                open_keepalive() as keepalive,
                open_webhooks(endpoints, grace_seconds=config.server.shutdown_grace_seconds),
                open_server_hub(config, WireEncoding()) as hub,
                open_apps(config, hub, observer_of) as apps,
            ):
                if own:
                    self._observe = hub.observer = Webhooks(own).observe
                self.hub = hub
                self.apps = apps
                self.keepalive = keepalive
                self.started = anyio.current_time()
                _log_open_api(self.config)
                _log_apps(self.config)
                try:
                    yield
                finally:
                    await self.drain()
        finally:
            self.hub = None
            self.apps = None
            self.keepalive = None
            self._observe = None
            if claim is not None:
                claim.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        started = False
        try:
            async with self.lifespan():
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
        except Exception as exc:
            logger.error("lifespan failed: %s", exc)
            failed = "lifespan.shutdown.failed" if started else "lifespan.startup.failed"
            await send({"type": failed, "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request, once its whole body has arrived.

        The request holds a connection slot until it is answered (see `service.slots`);
        its body must arrive within ``server.handshake_timeout_seconds`` (408, code 115).
        The body is read before any answer, even a refusal, so that a keep-alive
        connection is never answered ahead of its request; a request whose body is not
        read to the end is answered with ``connection: close``.
        """
        server = self.config.server
        headers = Headers(scope["headers"])

        async def body() -> bytes:
            return await read_body(scope, headers, receive, server)

        status, content, answer_headers = await self._answer(scope, headers, body)
        await Response(status, content, answer_headers)(scope, receive, send)

    def _clarion_door(self, server: ServerSettings) -> ClarionDoor:
        """Clarion's protocol under *server*'s settings: one door for all connections."""
        found = self._door
        if found is None or found[0] is not server:
            door = ClarionDoor(server, auth=self._current_auth, errors=self.counters.errors)
            found = self._door = (server, door)
        return found[1]

    @property
    def lane(self) -> tuple[Lane, int]:
        """`answer`, and the largest body it takes now: what `service.fastlane` holds
        for each connection (one tuple for all of them while the limit stays)."""
        lane = self._lane
        limit = self.config.server.max_request_bytes
        if lane is None or lane[1] != limit:
            lane = self._lane = (self.answer, limit)
        return lane

    async def answer(self, scope: Scope, body: bytes) -> Answer:
        """Answer an HTTP request whose whole *body* has arrived (within
        ``server.max_request_bytes``) without ASGI: `service.fastlane`'s way in."""

        async def arrived() -> bytes:
            return body

        return await self._answer(scope, Headers(scope["headers"]), arrived)

    async def _answer(
        self, scope: Scope, headers: Headers, body: Callable[[], Awaitable[bytes]]
    ) -> Answer:
        """The answer to an HTTP request whose *body* is read once it holds a slot."""
        server = self.config.server
        checked = not served_when_full(scope, headers, server.api_keys)
        try:
            with self._slots.hold(address(scope), server, checked=checked):
                return await self._route(scope, headers, await body())
        except (ProtocolError, ChannelsError) as exc:
            return self._refuse(exc)

    async def _route(self, scope: Scope, headers: Headers, body: bytes) -> Answer:
        """Find the route of a request whose *body* has arrived, and run its handler."""
        path, method = route_path(scope), scope["method"]
        route = self._http_routes.get(path)
        if route is None and self.apps is not None and is_pusher_path(path):
            return await pusher_api(
                self.apps,
                self.config.server,
                method=method,
                path=path,
                signed_path=scope["path"],
                query=QueryParams(scope.get("query_string", b"")),
                headers=headers,
                body=body,
            )
        if route is None:
            if path == self.config.server.websocket_path:
                raise UpgradeRequired(f"{path} is the WebSocket endpoint: connect with a WebSocket")
            raise RouteNotFound(f"no route at {path!r}")
        if method not in route.methods:
            raise MethodNotAllowed(method, path, route.methods)
        query = QueryParams(scope.get("query_string", b""))
        root = scope.get("root_path", "")
        return await route.handler(self, Request(path, headers, query, body, root))

    def _refuse(self, exc: ProtocolError | ChannelsError) -> Answer:
        """The status, body and headers of an HTTP refusal with *exc*."""
        self.counters.errors[exc.code] += 1
        headers = [*JSON_HEADERS]
        if isinstance(exc, MethodNotAllowed):
            headers.append((b"allow", ", ".join(exc.allowed).encode()))
        elif isinstance(exc, Unauthorized):
            headers.append((b"www-authenticate", b"Bearer"))
        elif isinstance(exc, UpgradeRequired):
            headers.append((b"upgrade", b"websocket"))
        elif isinstance(exc, RequestTooLarge | RequestTimeout):
            # The rest of the body was not read: the connection cannot take another request.
            headers.append((b"connection", b"close"))
        return exc.http_status or 400, _error_body(exc), headers


def _log_apps(config: Settings) -> None:
    """Say where the Pusher door's apps are reached."""
    for app in config.apps:
        logger.info(
            "Pusher app %s: clients at /app/%s, its HTTP API at /apps/%s/%s",
            app.id,
            app.key,
            app.id,
            " (the server's own channels)" if app.default else "",
        )


def _log_open_api(config: Settings) -> None:
    """Say so when the HTTP API is open: anyone who reaches it is an anonymous client."""
    if config.server.api_keys:
        return
    how = "server.api_open is set" if config.server.api_open else "no server.api_keys are set"
    logger.warning(
        "the HTTP API is open (%s): anyone who reaches it may publish and read where "
        "anonymous clients may",
        how,
    )


def _check_not_banned(hub: Hub, identity: Identity | None) -> None:
    """Refuse a connection whose user the server API keeps out for now.

    Raises:
        Banned: with when the ban ends.
    """
    user = None if identity is None else identity.user
    if user is None:
        return
    ban = hub.bans.of(user)
    if ban is not None and ban.until is not None:
        raise Banned(user, ban.until)


def _authenticator(config: Settings) -> Authenticator | None:
    """The token checker *config* asks for, if any.

    Raises:
        ConfigError: if a key file cannot be read or holds no usable key.
    """
    auth = config.auth
    return Authenticator(auth) if auth is not None and auth.enabled else None


def _error_body(exc: ProtocolError | ChannelsError) -> bytes:
    return encode_error(exc.code, str(exc))


def create_app(config: Settings | None = None) -> Clarion:
    """Build the app; without *config*, read the file named by ``CLARION_CONFIG``, if any.

    This is the entry point for running under the hypercorn command (the app tells
    hypercorn's asyncio and trio workers apart at startup):
    ``CLARION_CONFIG=channels.yaml hypercorn 'service.app:create_app()'``.

    Raises:
        ConfigError: if the configuration file is invalid.
    """
    if config is not None:
        return Clarion(config)
    source = ConfigSource(path=os.environ.get("CLARION_CONFIG") or None)
    return Clarion(source.load(), source)
