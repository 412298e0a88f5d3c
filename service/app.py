"""The ASGI application: lifespan, the WebSocket endpoint and the HTTP API."""

from __future__ import annotations

import hmac
import importlib.resources
import logging
import os
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec
from prometheus_client import generate_latest

from channels.config import ConfigSource
from channels.errors import (
    ChannelsError,
    ConfigError,
    ServerClosing,
)
from channels.hub import open_hub
from service.auth import SUBPROTOCOL, Authenticator, check_origin
from service.datastructures import Headers, QueryParams, URLPath
from service.errors import (
    AddressFull,
    BadMessage,
    InvalidToken,
    MethodNotAllowed,
    NodeFull,
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
from service.logs import fields, peer, reconfigure_logging
from service.metrics import CONTENT_TYPE, NodeCollector, NodeCounters, node_registry
from service.protocol import (
    PresenceReply,
    PublishReply,
    ReloadReply,
    StatsReply,
    WireEncoding,
    decode_publish_request,
    encode,
    encode_error,
)
from service.responses import Response
from service.session import run_session
from service.slots import Slots
from service.websocket import WebSocket
from service.workers import claim_only_worker
from service.wsstream import install_closing_stream

if TYPE_CHECKING:
    from channels.config import Config
    from channels.hub import Hub
    from service.types import Receive, Scope, Send

__all__ = ("Clarion", "NoMatchFound", "RESTART_ONLY", "create_app")

logger = logging.getLogger("clarion")

#: The HTTP status of each error an HTTP API call can end with.
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
#: Content types of the static files (the browser client and the dashboard), by suffix.
STATIC_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
#: Channels ``GET /api/stats`` lists unless ``?limit=`` says otherwise.
STATS_CHANNELS: Final = 100
_HEALTH_BODY = msgspec.json.encode({"status": "ok"})
_READY_BODY = msgspec.json.encode({"status": "ready"})


class NoMatchFound(Exception):
    """Raised by `Clarion.url_path_for` for a route name that does not exist."""

    def __init__(self, name: str, path_params: dict[str, Any]) -> None:
        params = ", ".join(path_params)
        super().__init__(f'No route exists for name "{name}" and params "{params}".')


class Clarion:
    """The Clarion ASGI application for one node.

    Routes: the WebSocket endpoint at ``server.websocket_path``, ``POST /api/publish``,
    ``GET /api/presence``, ``POST /api/reload``, ``GET /api/stats``, ``GET /health``
    (liveness), ``GET /ready`` (readiness), ``GET /metrics`` (Prometheus), and the
    dashboard at ``GET /`` with the browser client at ``GET /client.js``; everything
    else is a JSON 404. The hub lives in the lifespan.
    """

    def __init__(self, config: Config, source: ConfigSource | None = None) -> None:
        """Build the app for the node configured by *config*, read from *source* (which
        `reload` reads again; without one, the app cannot reload)."""
        self.config = config
        self.source = source
        self.auth = _authenticator(config)
        self._slots = Slots()
        self._frame_writers: set[TransportFrameWriter | SocketFrameWriter] = set()
        """The sockets of the connections in the hub, cut off if a drain's grace ends."""
        self.hub: Hub | None = None
        self._static = _static_files()
        self._current_auth = lambda: self.auth  # one function for every session
        self._reload_lock: anyio.Lock | None = None
        self._started = 0.0
        self.counters = NodeCounters()
        """Connections, disconnects and errors, for the metrics."""
        self._metrics = node_registry(NodeCollector(self.counters, lambda: self.hub))
        self._routes = {
            "websocket": URLPath(config.server.websocket_path, "websocket"),
            "publish": URLPath("/api/publish", "http"),
            "health": URLPath("/health", "http"),
            "ready": URLPath("/ready", "http"),
            "presence": URLPath("/api/presence", "http"),
            "metrics": URLPath("/metrics", "http"),
            "reload": URLPath("/api/reload", "http"),
            "stats": URLPath("/api/stats", "http"),
            "dashboard": URLPath("/", "http"),
            "client": URLPath("/client.js", "http"),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        if scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send), send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        """Return the path of the route called ``websocket``, ``publish``, ``presence``,
        ``reload``, ``stats``, ``health``, ``ready``, ``metrics``, ``dashboard`` or
        ``client``.

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
        first = not self.hub.closing
        self.hub.close()
        grace = self.config.server.shutdown_grace_seconds
        connections = self.hub.connection_count
        with anyio.move_on_after(grace):
            await self.hub.wait_no_connections()
        if first:
            left = self.hub.connection_count
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
        kept = {name: getattr(old.server, name) for name in RESTART_ONLY}
        server = msgspec.structs.replace(new.server, **kept)
        self.config = msgspec.structs.replace(new, server=server, broker=old.broker)
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

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        started = False
        claim = None
        try:
            if self.config.broker.kind == "memory":
                claim = claim_only_worker()
            async with open_hub(self.config, WireEncoding()) as hub:
                self.hub = hub
                self._started = anyio.current_time()
                _log_open_api(self.config)
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
                await self.drain()
        except Exception as exc:
            logger.error("lifespan failed: %s", exc)
            failed = "lifespan.shutdown.failed" if started else "lifespan.startup.failed"
            await send({"type": failed, "message": str(exc)})
            return
        finally:
            self.hub = None
            if claim is not None:
                claim.close()
        await send({"type": "lifespan.shutdown.complete"})

    async def _websocket(self, ws: WebSocket, send: Send) -> None:
        hub = self.hub
        if ws.scope["path"] != self.config.server.websocket_path:
            error: ProtocolError | ChannelsError = RouteNotFound(
                f"no WebSocket endpoint at {ws.scope['path']!r}"
            )
        elif hub is None or hub.closing:
            error = ServerClosing()
        else:
            try:
                server = self.config.server
                with self._slots.hold(_address(ws.scope), server):
                    allowed = server.allowed_origins
                    if self.auth is None:
                        check_origin(ws.scope, allowed, query_token=False)
                        identity = None
                    else:
                        identity = self.auth.identify(ws.scope, allowed)
                    offered = ws.scope.get("subprotocols", [])
                    install_closing_stream(send)  # close frames for protocol errors, 1009
                    frames = open_frame_writer(send)
                    writers = self._frame_writers
                    if frames is not None:
                        writers.add(frames)
                    try:
                        await run_session(
                            ws,
                            hub,
                            server,
                            identity=identity,
                            auth=self._current_auth,
                            subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None,
                            frames=frames,
                            counters=self.counters,
                            writers=writers,
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
            ) as exc:
                error = exc
            else:
                return
        self.counters.refused[_code(error)] += 1
        extra = fields(client=peer(ws.client), code=_code(error), reason=str(error))
        logger.info("handshake refused", extra=extra)
        body = _error_body(error)
        await ws.send_denial_response(Response(error.http_status or 400, body, _JSON_HEADERS))

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request, once its whole body has arrived.

        The request holds a connection slot until it is answered (see `service.slots`);
        its body must arrive within ``server.handshake_timeout_seconds`` (408, code 115).
        The body is read before any answer, even a refusal, so that a keep-alive
        connection is never answered ahead of its request; a request whose body is not
        read to the end is answered with ``connection: close``.
        """
        server = self.config.server
        request_headers = Headers(scope["headers"])
        # Probes, and callers with a valid API key (the backend), are served on a full
        # node; a probe only when it announces no body, which could arrive slowly.
        probe = scope["path"] in _PROBES and _bodiless(scope, request_headers)
        checked = not probe and not self._has_key(request_headers)
        try:
            with self._slots.hold(_address(scope), server, checked=checked):
                body = await self._read_body(scope, request_headers, receive)
                status, body, headers = await self._respond(scope, request_headers, body)
        except (ProtocolError, ChannelsError) as exc:
            status, body, headers = self._refuse(exc)
        await Response(status, body, headers)(scope, receive, send)

    async def _respond(
        self, scope: Scope, request_headers: Headers, body: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """Route a request whose *body* has arrived: its status, body and headers."""
        path, method = scope["path"], scope["method"]
        static = self._static.get(path)
        if path == "/metrics":
            if method not in {"GET", "HEAD"}:
                raise MethodNotAllowed(method, "/metrics", ("GET", "HEAD"))
            return 200, generate_latest(self._metrics), [(b"content-type", CONTENT_TYPE.encode())]
        if static is not None:
            if method not in {"GET", "HEAD"}:
                raise MethodNotAllowed(method, path, ("GET", "HEAD"))
            content, headers = static
            return 200, content, [*headers]
        status, content = await self._route(scope, request_headers, body)
        return status, content, [*_JSON_HEADERS]

    def _refuse(
        self, exc: ProtocolError | ChannelsError
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """The status, body and headers of an HTTP refusal with *exc*."""
        self.counters.errors[exc.code] += 1
        headers = [*_JSON_HEADERS]
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

    async def _route(
        self, scope: Scope, request_headers: Headers, body: bytes
    ) -> tuple[int, bytes]:
        path, method = scope["path"], scope["method"]
        if path == "/health":
            if method not in {"GET", "HEAD"}:
                raise MethodNotAllowed(method, path, ("GET", "HEAD"))
            return 200, _HEALTH_BODY
        if path == "/ready":
            if method not in {"GET", "HEAD"}:
                raise MethodNotAllowed(method, path, ("GET", "HEAD"))
            reason = "starting" if self.hub is None else self.hub.not_ready_reason()
            if reason is not None:
                return 503, msgspec.json.encode({"status": "not ready", "reason": reason})
            return 200, _READY_BODY
        if path == "/api/publish":
            if method != "POST":
                raise MethodNotAllowed(method, path, ("POST",))
            return 200, await self._publish(request_headers, body)
        if path == "/api/reload":
            if method != "POST":
                raise MethodNotAllowed(method, path, ("POST",))
            if not self.config.server.api_keys:
                raise Unauthorized("POST /api/reload needs server.api_keys to be set")
            self._authenticate(request_headers)
            return 200, encode(await self.reload())
        query = QueryParams(scope.get("query_string", b""))
        if path == "/api/stats":
            if method not in {"GET", "HEAD"}:
                raise MethodNotAllowed(method, path, ("GET", "HEAD"))
            trusted = self._authenticate(request_headers)
            return 200, encode(self._stats(query, trusted=trusted))
        if path == "/api/presence":
            if method not in {"GET", "HEAD"}:
                raise MethodNotAllowed(method, path, ("GET", "HEAD"))
            return 200, await self._presence(request_headers, query)
        if path == self.config.server.websocket_path:
            raise UpgradeRequired(f"{path} is the WebSocket endpoint: connect with a WebSocket")
        raise RouteNotFound(f"no route at {path!r}")

    async def _publish(self, request_headers: Headers, body: bytes) -> bytes:
        trusted = self._authenticate(request_headers)
        request = decode_publish_request(body)
        if self.hub is None:
            raise ServerClosing
        published = await self.hub.publish(
            request.channel, request.data, trusted=trusted, idempotency_key=request.idempotency_key
        )
        position = published.position
        reply = PublishReply(
            channel=request.channel,
            offset=position.offset,
            epoch=position.epoch,
            duplicate=published.duplicate,
        )
        return encode(reply)

    async def _presence(self, request_headers: Headers, query: QueryParams) -> bytes:
        trusted = self._authenticate(request_headers)
        channel = query.get("channel")
        if not channel:
            raise BadMessage("GET /api/presence needs ?channel=NAME")
        if self.hub is None:
            raise ServerClosing
        # Without a key, the caller is an anonymous client: it sees what one may.
        clients = await self.hub.presence(channel, trusted=trusted)
        return encode(PresenceReply(channel=channel, clients=clients))

    def _stats(self, query: QueryParams, *, trusted: bool) -> StatsReply:
        hub = self.hub
        if hub is None:
            raise ServerClosing
        try:
            limit = int(query.get("limit", STATS_CHANNELS))
        except ValueError:
            raise BadMessage("?limit= must be an integer") from None
        if limit < 0:
            raise BadMessage("?limit= must not be negative")
        stats = hub.statistics()
        return StatsReply(
            ready=hub.not_ready_reason() is None,
            reason=hub.not_ready_reason(),
            broker=self.config.broker.kind,
            websocket_path=self.config.server.websocket_path,
            uptime_seconds=round(anyio.current_time() - self._started, 3),
            connections=stats.connections,
            subscriptions=stats.subscriptions,
            published=stats.accepted,
            delivered=hub.traffic.deliveries,
            channels=hub.channel_statistics(limit, trusted=trusted),
        )

    def _authenticate(self, headers: Headers) -> bool:
        """Check the API key when keys are configured; return whether the caller is trusted."""
        if not self.config.server.api_keys:
            return False
        if _bearer(headers) is None:
            raise Unauthorized("this API needs 'Authorization: Bearer <key>'")
        if not self._has_key(headers):
            raise Unauthorized("the API key is not valid")
        return True

    def _has_key(self, headers: Headers) -> bool:
        """Whether the request carries one of the API keys."""
        given = _bearer(headers)
        if given is None:
            return False
        # Compare with every key, in constant time, so timing tells nothing about them.
        found = False
        for key in self.config.server.api_keys:
            found |= hmac.compare_digest(given.encode(), key.encode())
        return found

    async def _read_body(self, scope: Scope, headers: Headers, receive: Receive) -> bytes:
        """Read the request's body to its end, within ``server.handshake_timeout_seconds``.

        Raises:
            RequestTooLarge: once it exceeds ``server.max_request_bytes`` (the rest is
                not read).
            RequestTimeout: if it does not end in time.
        """
        server = self.config.server
        if _bodiless(scope, headers):
            # The server hands the empty body over at once: no deadline, whose timer
            # would cost as much as the rest of a GET.
            return await self._read_chunks(receive, server.max_request_bytes)
        deadline = server.handshake_timeout_seconds
        with anyio.move_on_after(deadline):
            return await self._read_chunks(receive, server.max_request_bytes)
        raise RequestTimeout(f"the request body did not arrive within {deadline:g}s")

    async def _read_chunks(self, receive: Receive, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"the request body exceeds {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


_JSON_HEADERS = [(b"content-type", b"application/json")]
#: Routes served even on a full node: an orchestrator must still see that it lives.
_PROBES: Final = frozenset(("/health", "/ready", "/metrics"))


def _log_open_api(config: Config) -> None:
    """Say so when the HTTP API is open: anyone who reaches it is an anonymous client."""
    if config.server.api_keys:
        return
    how = "server.api_open is set" if config.server.api_open else "no server.api_keys are set"
    logger.warning(
        "the HTTP API is open (%s): anyone who reaches it may publish and read where "
        "anonymous clients may",
        how,
    )


def _bodiless(scope: Scope, headers: Headers) -> bool:
    """Whether an HTTP/1 request has no body (HTTP/2 sends one without announcing it)."""
    if scope.get("http_version") not in {"1.0", "1.1"}:
        return False
    return headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers


def _bearer(headers: Headers) -> str | None:
    """The credential of an ``Authorization: Bearer`` header, if the request has one."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return given if scheme.lower() == "bearer" and given else None


def _address(scope: Scope) -> str:
    """The client's IP address ("" when the server does not say)."""
    return (scope.get("client") or ("", 0))[0]


def _static_files() -> dict[str, tuple[bytes, list[tuple[bytes, bytes]]]]:
    """The files of ``service/static`` by the path they are served at, with their headers.

    ``index.html`` is the dashboard, served at ``/``; every file may be loaded from a
    page of any origin (a module script is fetched with CORS).
    """
    files: dict[str, tuple[bytes, list[tuple[bytes, bytes]]]] = {}
    folder = importlib.resources.files("service") / "static"
    if not folder.is_dir():
        return files
    for item in folder.iterdir():
        content_type = STATIC_TYPES.get(os.path.splitext(item.name)[1])
        if content_type is None or not item.is_file():
            continue
        body = item.read_bytes()
        headers = [
            (b"content-type", content_type),
            (b"cache-control", b"no-cache"),
            (b"access-control-allow-origin", b"*"),
        ]
        path = "/" if item.name == "index.html" else f"/{item.name}"
        files[path] = (body, headers)
    return files


def _authenticator(config: Config) -> Authenticator | None:
    """The token checker *config* asks for, if any.

    Raises:
        ConfigError: if a key file cannot be read or holds no usable key.
    """
    auth = config.auth
    return Authenticator(auth) if auth is not None and auth.enabled else None


def _code(exc: Exception) -> int:
    return exc.code if isinstance(exc, ProtocolError | ChannelsError) else 500


def _error_body(exc: Exception) -> bytes:
    return encode_error(_code(exc), str(exc))


def create_app(config: Config | None = None) -> Clarion:
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
