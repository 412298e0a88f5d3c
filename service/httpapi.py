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
from typing import TYPE_CHECKING, Final, NamedTuple

import anyio
import msgspec
from prometheus_client import generate_latest

from service.admission import trusted
from service.apibodies import (
    BroadcastRequest,
    ChannelsReply,
    DisconnectRequest,
    PresenceStatsReply,
    UnsubscribeRequest,
    broadcast_reply,
)
from service.errors import BadMessage, NotStarted, Unauthorized
from service.metrics import CONTENT_TYPE
from service.protocol import (
    HistoryEntry,
    HistoryReply,
    PresenceReply,
    PublishReply,
    Reply,
    StatsReply,
    decode_body,
    decode_publish_request,
    encode,
)
from service.serverapi import CHANNELS_PAGE, ServerAPI

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

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
_broadcast_decoder = msgspec.json.Decoder(BroadcastRequest)
_disconnect_decoder = msgspec.json.Decoder(DisconnectRequest)
_unsubscribe_decoder = msgspec.json.Decoder(UnsubscribeRequest)
_DONE: Final = encode(Reply())


class Request(NamedTuple):
    """An HTTP request whose body has arrived."""

    path: str
    headers: Headers
    query: QueryParams
    body: bytes


class Route(NamedTuple):
    """One HTTP route: its name (for ``url_path_for``), path, methods and handler."""

    name: str
    path: str
    methods: tuple[str, ...]
    handler: Callable[[Clarion, Request], Awaitable[Answer]]


def routes() -> dict[str, Route]:
    """Every HTTP route by its path, the static files included."""
    table = [
        Route("health", "/health", _READ, _health),
        Route("ready", "/ready", _READ, _ready),
        Route("metrics", "/metrics", _READ, _metrics),
        Route("publish", "/api/publish", _WRITE, _publish),
        Route("broadcast", "/api/broadcast", _WRITE, _broadcast),
        Route("history", "/api/history", _READ, _history),
        Route("presence", "/api/presence", _READ, _presence),
        Route("channels", "/api/channels", _READ, _channels),
        Route("disconnect", "/api/disconnect", _WRITE, _disconnect),
        Route("unsubscribe", "/api/unsubscribe", _WRITE, _unsubscribe),
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


async def _publish(app: Clarion, request: Request) -> Answer:
    api = _api(app, request)
    publish = decode_publish_request(request.body)
    published = await api.publish(
        publish.channel, publish.data, idempotency_key=publish.idempotency_key
    )
    position = published.position
    reply = PublishReply(
        channel=publish.channel,
        offset=position.offset,
        epoch=position.epoch,
        duplicate=published.duplicate,
    )
    return 200, encode(reply), [*JSON_HEADERS]


async def _broadcast(app: Clarion, request: Request) -> Answer:
    api = _api(app, request)
    broadcast = decode_body(_broadcast_decoder, request.body)
    results = await api.broadcast(
        broadcast.channels, broadcast.data, idempotency_key=broadcast.idempotency_key
    )
    return 200, encode(broadcast_reply(broadcast.channels, results)), [*JSON_HEADERS]


async def _history(app: Clarion, request: Request) -> Answer:
    api = _api(app, request)
    channel = _channel_param(request)
    since = _int_param(request, "since", minimum=0)
    limit = _int_param(request, "limit", minimum=1)
    page = await api.history(channel, since=since, limit=limit)
    reply = HistoryReply(
        channel=channel,
        offset=page.position.offset,
        epoch=page.position.epoch,
        messages=[HistoryEntry(item.offset, item.data) for item in page.publications],
    )
    return 200, encode(reply), [*JSON_HEADERS]


async def _presence(app: Clarion, request: Request) -> Answer:
    # Without a key, the caller is an anonymous client: it sees what one may.
    api = _api(app, request)
    channel = _channel_param(request)
    if _flag_param(request, "count_only"):
        stats = await api.presence_stats(channel)
        counted = PresenceStatsReply(
            channel=channel, client_count=stats.clients, user_count=stats.users
        )
        return 200, encode(counted), [*JSON_HEADERS]
    clients = await api.presence(channel)
    return 200, encode(PresenceReply(channel=channel, clients=clients)), [*JSON_HEADERS]


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
        websocket_path=app.config.server.websocket_path,
        uptime_seconds=round(anyio.current_time() - app.started, 3),
        connections=stats.connections,
        subscriptions=stats.subscriptions,
        published=stats.accepted,
        delivered=hub.traffic.deliveries,
        channels=hub.channel_statistics(limit, trusted=caller_trusted),
    )
    return 200, encode(reply), [*JSON_HEADERS]


async def _channels(app: Clarion, request: Request) -> Answer:
    api = _api(app, request)
    limit = _int_param(request, "limit", minimum=1)
    page = await api.channels(
        prefix=request.query.get("prefix", ""),
        cursor=request.query.get("cursor") or None,
        limit=CHANNELS_PAGE if limit is None else limit,
    )
    return 200, encode(ChannelsReply(channels=page.channels, cursor=page.cursor)), [*JSON_HEADERS]


async def _disconnect(app: Clarion, request: Request) -> Answer:
    api = _keyed_api(app, request)
    disconnect = decode_body(_disconnect_decoder, request.body)
    await api.disconnect(
        disconnect.user, code=disconnect.code, reason=disconnect.reason, until=disconnect.until
    )
    return 200, _DONE, [*JSON_HEADERS]


async def _unsubscribe(app: Clarion, request: Request) -> Answer:
    api = _keyed_api(app, request)
    unsubscribe = decode_body(_unsubscribe_decoder, request.body)
    await api.unsubscribe(unsubscribe.user, unsubscribe.channel)
    return 200, _DONE, [*JSON_HEADERS]


async def _reload(app: Clarion, request: Request) -> Answer:
    _keyed_api(app, request)
    return 200, encode(await app.reload()), [*JSON_HEADERS]


def _keyed_api(app: Clarion, request: Request) -> ServerAPI:
    """The server API for a request that only a caller with an API key may make (it acts
    on every connection of the node or of a user: no anonymous client may).

    Raises:
        Unauthorized: if no keys are set, or the request shows none of them.
    """
    if not app.config.server.api_keys:
        raise Unauthorized(f"POST {request.path} needs server.api_keys to be set")
    return _api(app, request)


def _api(app: Clarion, request: Request) -> ServerAPI:
    """The server API as *request* may use it: trusted with an API key.

    Raises:
        Unauthorized: keys are set, and the request shows none of them.
    """
    return ServerAPI(app, trusted=trusted(request.headers, app.config.server.api_keys))


def _channel_param(request: Request) -> str:
    channel = request.query.get("channel")
    if not channel:
        raise BadMessage(f"GET {request.path} needs ?channel=NAME")
    return channel


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


def _flag_param(request: Request, name: str) -> bool:
    """Whether the query sets *name* (``1`` or ``true``; ``0``, ``false`` or absent: no).

    Raises:
        BadMessage: for any other value.
    """
    text = request.query.get(name, "0").lower()
    if text not in ("0", "1", "false", "true"):
        raise BadMessage(f"?{name}= must be 1, true, 0 or false")
    return text in ("1", "true")


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
