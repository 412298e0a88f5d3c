"""The HTTP routes, as a table: probes, metrics, the static files and the HTTP API.

Each route names its methods and its handler; `Clarion` looks the path up, refuses a
method the route does not take (405), and calls the handler once the request's whole
body has arrived. A handler returns its status, body and headers, or raises a coded
error that the app answers with (see ``http_status`` on the error classes).
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, NamedTuple

import anyio
import msgspec
from prometheus_client import generate_latest

from service.admission import trusted
from service.apibodies import (
    BatchItem,
    BatchReply,
    BatchRequest,
    BroadcastRequest,
    ChannelsRequest,
    DisconnectRequest,
    HistoryRequest,
    PresenceRequest,
    PublishRequest,
    UnsubscribeRequest,
)
from service.errors import BadMessage, NotStarted, Unauthorized
from service.metrics import CONTENT_TYPE
from service.operations import check_keys, run, run_batch
from service.protocol import AppStats, StatsReply, decode_body, decode_query, encode
from service.serverapi import ServerAPI

if TYPE_CHECKING:
    from channels.hub import Hub
    from service.app import Clarion
    from service.datastructures import Headers, QueryParams

__all__ = (
    "Answer",
    "JSON_HEADERS",
    "Request",
    "Route",
    "STATIC_TYPES",
    "STATS_CHANNELS",
    "api_paths",
    "routes",
)

#: A handler's answer: the status, the body and the headers (``content-length`` aside).
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]

JSON_HEADERS: Final = [(b"content-type", b"application/json")]
#: Content types of the static files (the browser client and the dashboard), by suffix.
STATIC_TYPES: Final = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
#: Channels ``GET /api/stats`` lists unless ``?limit=`` says otherwise.
STATS_CHANNELS: Final = 100
_READ: Final = ("GET", "HEAD")
_WRITE: Final = ("POST",)
_HEALTH_BODY: Final = msgspec.json.encode({"status": "ok"})
_READY_BODY: Final = msgspec.json.encode({"status": "ready"})
_batch_decoder = msgspec.json.Decoder(BatchRequest)
#: The server API's routes: ``/api/NAME``, and the request each reads.
_POSTED: Final[dict[str, type[BatchItem]]] = {
    "publish": PublishRequest,
    "broadcast": BroadcastRequest,
    "disconnect": DisconnectRequest,
    "unsubscribe": UnsubscribeRequest,
}
_READ_WITH_QUERY: Final[dict[str, type[BatchItem]]] = {
    "history": HistoryRequest,
    "presence": PresenceRequest,
    "channels": ChannelsRequest,
}


class Request(NamedTuple):
    """An HTTP request whose body has arrived."""

    path: str
    """The path under the app (without the ``root_path`` it is mounted at)."""
    headers: Headers
    query: QueryParams
    body: bytes
    root: str = ""
    """The path the app is mounted at (ASGI's ``root_path``), as clients see it."""


Handler = Callable[["Clarion", Request], Awaitable[Answer]]
"""What a route runs for a request whose body has arrived."""


class Route(NamedTuple):
    """One HTTP route: its name (for ``url_path_for``), path, methods and handler."""

    name: str
    path: str
    methods: tuple[str, ...]
    handler: Handler


def routes() -> dict[str, Route]:
    """Every HTTP route by its path, the static files included."""
    table = [
        Route("health", "/health", _READ, _health),
        Route("ready", "/ready", _READ, _ready),
        Route("metrics", "/metrics", _READ, _metrics),
        *(
            Route(name, f"/api/{name}", _WRITE, _operation(kind, from_query=False))
            for name, kind in _POSTED.items()
        ),
        *(
            Route(name, f"/api/{name}", _READ, _operation(kind, from_query=True))
            for name, kind in _READ_WITH_QUERY.items()
        ),
        Route("batch", "/api/batch", _WRITE, _batch),
        Route("stats", "/api/stats", _READ, _stats),
        Route("reload", "/api/reload", _WRITE, _reload),
    ]
    for path in _static_files():
        name = {"/": "dashboard", "/client.js": "client"}.get(path, path.lstrip("/"))
        table.append(Route(name, path, _READ, _static))
    return {route.path: route for route in table}


def api_paths() -> frozenset[str]:
    """The paths of the HTTP API and the probes, which the WebSocket endpoint may not take
    (it may share a static file's: a browser asks for those over plain HTTP)."""
    return frozenset(route.path for route in routes().values() if route.handler is not _static)


async def _health(app: Clarion, request: Request) -> Answer:
    return 200, _HEALTH_BODY, [*JSON_HEADERS]


async def _ready(app: Clarion, request: Request) -> Answer:
    reason = "starting" if app.hub is None else app.hub.not_ready_reason()
    if reason is not None:
        body = msgspec.json.encode({"status": "not ready", "reason": reason})
        return 503, body, [*JSON_HEADERS]
    return 200, _READY_BODY, [*JSON_HEADERS]


async def _metrics(app: Clarion, request: Request) -> Answer:
    return 200, generate_latest(app.metrics), [(b"content-type", CONTENT_TYPE.encode())]


async def _static(app: Clarion, request: Request) -> Answer:
    content, headers = _static_files()[request.path]
    return 200, content, [*headers]


def _operation(kind: type[BatchItem], *, from_query: bool) -> Handler:
    """The handler of a server API route: it reads a *kind* request from the body, or
    from the query when *from_query*, and answers what `service.operations.run` does."""
    decoder = msgspec.json.Decoder(kind)

    async def handle(app: Clarion, request: Request) -> Answer:
        api = _api(app, request)
        keys_set = bool(app.config.server.api_keys)
        check_keys(kind, keys_set=keys_set)
        if from_query:
            body = decode_query(kind, request.query)
        else:
            body = decode_body(decoder, request.body)
        return 200, encode(await run(api, body, keys_set=keys_set)), [*JSON_HEADERS]

    return handle


async def _batch(app: Clarion, request: Request) -> Answer:
    api = _api(app, request)
    batch = decode_body(_batch_decoder, request.body)
    limit = app.config.server.batch_max_requests
    if len(batch.requests) > limit:
        raise BadMessage(f"requests: a batch holds at most {limit}, not {len(batch.requests)}")
    answers = await run_batch(
        api,
        batch.requests,
        keys_set=bool(app.config.server.api_keys),
        errors=app.counters.errors,
    )
    reply = BatchReply(replies=[msgspec.Raw(answer) for answer in answers])
    return 200, encode(reply), [*JSON_HEADERS]


async def _reload(app: Clarion, request: Request) -> Answer:
    if not app.config.server.api_keys:
        raise Unauthorized("POST /api/reload needs server.api_keys to be set")
    trusted(request.headers, app.config.server.api_keys)
    return 200, encode(await app.reload()), [*JSON_HEADERS]


async def _stats(app: Clarion, request: Request) -> Answer:
    caller_trusted = trusted(request.headers, app.config.server.api_keys)
    hub = _hub(app)
    limit = _int_param(request, "limit", minimum=0)
    limit = STATS_CHANNELS if limit is None else limit
    stats = hub.statistics()
    reply = StatsReply(
        ready=hub.not_ready_reason() is None,
        reason=hub.not_ready_reason(),
        broker=app.config.broker.kind,
        websocket_path=request.root + app.config.server.websocket_path,
        uptime_seconds=round(anyio.current_time() - app.started, 3),
        connections=stats.connections,
        subscriptions=stats.subscriptions,
        published=stats.accepted,
        delivered=hub.traffic.deliveries,
        channels=hub.channel_statistics(limit, trusted=caller_trusted),
        apps=_app_stats(app) if caller_trusted or not app.config.server.api_keys else [],
    )
    return 200, encode(reply), [*JSON_HEADERS]


def _app_stats(app: Clarion) -> list[AppStats]:
    """Each Pusher app's figures on this node (the default app's are the server's)."""
    found = []
    for each in app.apps or ():
        stats = each.hub.statistics()
        found.append(
            AppStats(
                id=each.settings.id,
                connections=stats.connections,
                subscriptions=stats.subscriptions,
                channels=stats.channels,
                published=stats.accepted,
                delivered=each.hub.traffic.deliveries,
            )
        )
    return sorted(found, key=lambda stats: stats.id)


def _api(app: Clarion, request: Request) -> ServerAPI:
    """The server API as *request* may use it: trusted with an API key.

    Raises:
        Unauthorized: keys are set, and the request shows none of them.
    """
    return ServerAPI(app, trusted=trusted(request.headers, app.config.server.api_keys))


def _int_param(request: Request, name: str, *, minimum: int) -> int | None:
    """The query's integer *name* (None when absent).

    Raises:
        BadMessage: if it is not an integer of at least *minimum*.
    """
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise BadMessage(f"?{name}= must be an integer") from None
    if value < minimum:
        raise BadMessage(f"?{name}= must be at least {minimum}")
    return value


def _hub(app: Clarion) -> Hub:
    """The app's hub, which exists from startup to shutdown.

    Raises:
        NotStarted: outside that time.
    """
    if app.hub is None:
        raise NotStarted
    return app.hub


@functools.cache
def _static_files() -> dict[str, tuple[bytes, list[tuple[bytes, bytes]]]]:
    """The files of ``service/static`` by the path they are served at, with their headers.

    ``index.html`` is the dashboard, served at ``/``; every file may be loaded from a
    page of any origin (a module script is fetched with CORS). Read once per process.
    """
    files: dict[str, tuple[bytes, list[tuple[bytes, bytes]]]] = {}
    folder = importlib.resources.files("service") / "static"
    for item in folder.iterdir() if folder.is_dir() else ():
        content_type = STATIC_TYPES.get(os.path.splitext(item.name)[1])
        if content_type is None or not item.is_file():
            continue
        headers = [
            (b"content-type", content_type),
            (b"cache-control", b"no-cache"),
            (b"access-control-allow-origin", b"*"),
        ]
        files["/" if item.name == "index.html" else f"/{item.name}"] = (item.read_bytes(), headers)
    return files
