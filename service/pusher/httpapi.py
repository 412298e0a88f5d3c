"""The Pusher HTTP API (Pusher's "HTTP API reference"), under ``/apps/{app_id}/``:

- ``POST events``: one event to one or many channels, ``socket_id`` to leave its
  connection out, ``info`` (``subscription_count``, ``user_count``) in the reply;
- ``POST batch_events``: several events at once;
- ``GET channels``: the occupied channels, ``filter_by_prefix`` and ``info``;
- ``GET channels/{name}``: one channel's state;
- ``GET channels/{name}/users``: a presence channel's users;
- ``POST users/{user_id}/terminate_connections``: close a signed-in user's connections
  (also at ``/users/{user_id}/terminate_connections``, where the Python library sends it).

Every request is signed with the app's secret (see `service.pusher.signatures`) and its
``auth_timestamp`` must be within `TIMESTAMP_WINDOW_SECONDS` of the server's clock. The
engine does the rest as for Clarion's HTTP API: rules, limits, the data's shape,
idempotency (``X-Idempotency-Key``), with the errors of docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import TYPE_CHECKING, Annotated, Final

import msgspec

from channels.errors import ChannelsError
from service.errors import (
    BadMessage,
    MethodNotAllowed,
    RateLimited,
    RouteNotFound,
    Unauthorized,
)
from service.protocol import decode_body
from service.pusher.codes import PusherCode
from service.pusher.names import is_presence
from service.pusher.protocol import RESERVED_PREFIXES, Envelope, encode_envelope
from service.pusher.session import EVENT_NAME_MAX_LENGTH
from service.pusher.signatures import request_string, sign

if TYPE_CHECKING:
    from channels.hub import Hub
    from service.apps import App, Apps
    from service.datastructures import Headers, QueryParams
    from service.settings import ServerSettings

__all__ = (
    "BatchEvent",
    "BatchRequest",
    "CHANNELS_LIST_MAX",
    "EventRequest",
    "TIMESTAMP_WINDOW_SECONDS",
    "answer",
    "is_pusher_path",
)

#: How far a request's ``auth_timestamp`` may be from the server's clock.
TIMESTAMP_WINDOW_SECONDS: Final = 600
#: The most channels ``GET channels`` lists (Pusher lists them all; past this many, the
#: list is cut short).
CHANNELS_LIST_MAX: Final = 10_000
_PAGE: Final = 1000

_SOCKET_ID = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_PATH = re.compile(
    r"/apps/(?P<app>[^/]+)/(?P<route>events|batch_events|channels)"
    r"(?:/(?P<channel>[^/]+)(?P<users>/users)?)?"
    r"|(?:/apps/(?P<app2>[^/]+))?/users/(?P<user>[^/]+)/terminate_connections"
)
_JSON: Final = [(b"content-type", b"application/json")]
_EMPTY: Final = b"{}"

Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
EventName = Annotated[str, msgspec.Meta(min_length=1, max_length=EVENT_NAME_MAX_LENGTH)]


class EventRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    """The body of ``POST events``: ``channels`` or ``channel``."""

    name: EventName
    data: str
    channels: list[str] | None = None
    channel: str | None = None
    socket_id: str | None = None
    info: str | None = None


class BatchEvent(msgspec.Struct, frozen=True):
    """One event of ``POST batch_events``."""

    channel: str
    name: EventName
    data: str
    socket_id: str | None = None
    info: str | None = None


class BatchRequest(msgspec.Struct, frozen=True):
    """The body of ``POST batch_events``."""

    batch: list[BatchEvent]


_events = msgspec.json.Decoder(EventRequest)
_batches = msgspec.json.Decoder(BatchRequest)
_encoder = msgspec.json.Encoder()


def is_pusher_path(path: str) -> bool:
    """Whether *path* is one of this API's."""
    return path.startswith(("/apps/", "/users/"))


async def answer(
    apps: Apps,
    server: ServerSettings,
    *,
    method: str,
    path: str,
    signed_path: str,
    query: QueryParams,
    headers: Headers,
    body: bytes,
) -> Answer:
    """Answer one request of the Pusher HTTP API.

    Args:
        apps: the node's apps.
        server: the server's settings (``broadcast_max_channels``, ``batch_max_requests``).
        method: the request's method.
        path: its path under the server.
        signed_path: its path as the client sent it (and signed it).
        query: its query.
        headers: its headers.
        body: its body.

    Raises:
        RouteNotFound: for another path, or an app that does not exist.
        Unauthorized: for a request not signed with the app's secret.
        BadMessage: for a body or a query that is not what the route takes.
        ChannelsError: what the engine refused.
    """
    found = _PATH.fullmatch(path)
    if found is None:
        raise RouteNotFound(f"no route at {path!r}")
    app_id = found["app"] or found["app2"]
    app = _app(apps, app_id, query.get("auth_key"))
    _check_signature(app, method, signed_path, query, body)
    hub = app.hub
    route, channel, user = found["route"], found["channel"], found["user"]
    key = headers.get("x-idempotency-key")
    if user is not None:
        _expect(method, "POST", path)
        code, reason = PusherCode.UNAUTHORIZED, "terminated by the app's backend"
        await hub.disconnect_user(user, code=code, reason=reason)
        return 200, _EMPTY, [*_JSON]
    if route == "events":
        _expect(method, "POST", path)
        request = decode_body(_events, body)
        channels = request.channels or ([] if request.channel is None else [request.channel])
        if not channels:
            raise BadMessage("name at least one channel in channels")
        limit = server.broadcast_max_channels
        if len(channels) > limit:
            raise BadMessage(f"{len(channels)} channels: {limit} at most")
        data = _envelope(request.name, request.data, request.socket_id)
        # Everything checked before anything is published: a refusal publishes nothing.
        wanted = _attributes(request.info)
        for channel in channels:
            hub.check_publish(channel, data, trusted=True)
            _check_attributes(channel, wanted)
        _take_events(app, len(channels))
        results = await hub.broadcast(channels, data, trusted=True, idempotency_key=key)
        for result in results:
            if isinstance(result, ChannelsError):
                raise result
        return 200, await _info_reply(hub, channels, request.info), [*_JSON]
    if route == "batch_events":
        _expect(method, "POST", path)
        batch = decode_body(_batches, body).batch
        limit = server.batch_max_requests
        if len(batch) > limit:
            raise BadMessage(f"{len(batch)} events in a batch: {limit} at most")
        events = [(event, _envelope(event.name, event.data, event.socket_id)) for event in batch]
        for event, data in events:
            hub.check_publish(event.channel, data, trusted=True)
            _check_attributes(event.channel, _attributes(event.info))
        _take_events(app, len(events))
        for index, (event, data) in enumerate(events):
            # Each event its own key: a retried batch publishes none of them twice.
            each = None if key is None else f"{key}:{index}"
            await hub.publish(event.channel, data, trusted=True, idempotency_key=each)
        if not any(event.info for event in batch):
            return 200, _EMPTY, [*_JSON]
        infos = [await _channel_info(hub, event.channel, event.info) for event in batch]
        return 200, _encoder.encode({"batch": infos}), [*_JSON]
    _expect(method, "GET", path)
    if channel is None:
        return 200, await _channels(hub, query), [*_JSON]
    hub.check_channel(channel)
    if found["users"]:
        if not is_presence(channel):
            raise BadMessage("users are listed for presence channels only")
        users = await _users(hub, channel)
        return 200, _encoder.encode({"users": [{"id": user} for user in users]}), [*_JSON]
    info = await _channel_info(hub, channel, query.get("info"))
    occupied = await _subscription_count(hub, channel) > 0
    return 200, _encoder.encode({"occupied": occupied, **info}), [*_JSON]


def _app(apps: Apps, app_id: str | None, auth_key: str | None) -> App:
    app = apps.by_id(app_id) if app_id is not None else None
    if app_id is None and auth_key is not None:
        app = apps.by_key(auth_key)
    if app is None:
        raise RouteNotFound("no such app")
    return app


def _check_signature(
    app: App, method: str, signed_path: str, query: QueryParams, body: bytes
) -> None:
    """Make sure the request is signed with *app*'s secret, recently.

    Raises:
        Unauthorized: saying what is wrong (never what the signature should be).
    """
    settings = app.settings
    missing = [
        name
        for name in ("auth_key", "auth_timestamp", "auth_version", "auth_signature")
        if name not in query
    ]
    if missing:
        raise Unauthorized(f"missing {', '.join(missing)}")
    if not hmac.compare_digest(query["auth_key"].encode(), settings.key.encode()):
        raise Unauthorized("auth_key is not the app's key")
    if query["auth_version"] != "1.0":
        raise Unauthorized("auth_version must be 1.0")
    timestamp = query["auth_timestamp"]
    if (
        not _TIMESTAMP.fullmatch(timestamp)
        or abs(time.time() - int(timestamp)) > TIMESTAMP_WINDOW_SECONDS
    ):
        raise Unauthorized(
            f"auth_timestamp is not within {TIMESTAMP_WINDOW_SECONDS} s of the server's clock"
        )
    if body and query.get("body_md5") != hashlib.md5(body, usedforsecurity=False).hexdigest():
        raise Unauthorized("body_md5 is not the body's MD5")
    expected = sign(settings.secret, request_string(method, signed_path, query.multi_items()))
    if not hmac.compare_digest(query["auth_signature"].encode(), expected.encode()):
        raise Unauthorized("invalid signature")


def _take_events(app: App, count: int) -> None:
    if not app.take_backend_events(count):
        rate = app.settings.backend_events_per_second or 0.0
        if count > max(rate, 1.0):
            raise RateLimited(
                f"{count} events in one request: over the app's {rate:g} per second at once"
            )
        raise RateLimited(f"the app's backend sends over {rate:g} events per second")


def _expect(method: str, allowed: str, path: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise MethodNotAllowed(method, path, (allowed,))


def _envelope(name: str, data: str, socket_id: str | None) -> msgspec.Raw:
    if name.startswith(RESERVED_PREFIXES):
        raise BadMessage(f"event {name[:40]!r}: names starting with pusher: are the server's")
    if socket_id is not None and not _SOCKET_ID.fullmatch(socket_id):
        raise BadMessage(f"socket_id {socket_id[:40]!r} is not a socket id")
    return encode_envelope(Envelope(name, msgspec.Raw(_encoder.encode(data)), None, socket_id))


async def _subscription_count(hub: Hub, channel: str) -> int:
    page = await hub.channels(prefix=channel, limit=1, trusted=True)
    found = page.channels
    return found[0].subscribers if found and found[0].channel == channel else 0


async def _users(hub: Hub, channel: str) -> list[str]:
    clients = await hub.presence(channel, trusted=True)
    return sorted({client.user for client in clients if client.user is not None})


def _attributes(info: str | None) -> set[str]:
    """The attributes *info* asks for.

    Raises:
        BadMessage: for an attribute Pusher does not have.
    """
    wanted = set((info or "").split(",")) - {""}
    unknown = wanted - {"subscription_count", "user_count", "cache"}
    if unknown:
        raise BadMessage(f"unknown info attribute {sorted(unknown)[0][:40]!r}")
    return wanted


def _check_attributes(channel: str, wanted: set[str]) -> None:
    if "user_count" in wanted and not is_presence(channel):
        raise BadMessage("user_count is for presence channels only")


async def _channel_info(hub: Hub, channel: str, info: str | None) -> dict[str, int]:
    """The attributes *info* asks for (``subscription_count``, ``user_count``)."""
    wanted = _attributes(info)
    _check_attributes(channel, wanted)
    found: dict[str, int] = {}
    if "subscription_count" in wanted:
        found["subscription_count"] = await _subscription_count(hub, channel)
    if "user_count" in wanted:
        found["user_count"] = len(await _users(hub, channel))
    return found


async def _info_reply(hub: Hub, channels: list[str], info: str | None) -> bytes:
    if not info:
        return _EMPTY
    infos = {channel: await _channel_info(hub, channel, info) for channel in channels}
    return _encoder.encode({"channels": infos})


async def _channels(hub: Hub, query: QueryParams) -> bytes:
    """``GET channels``: the occupied channels, up to `CHANNELS_LIST_MAX`."""
    prefix = query.get("filter_by_prefix", "")
    info = query.get("info")
    if "user_count" in _attributes(info) and not is_presence(prefix):
        raise BadMessage("info=user_count needs filter_by_prefix=presence-")
    listed: dict[str, dict[str, int]] = {}
    cursor = None
    wanted = set((info or "").split(","))
    while len(listed) < CHANNELS_LIST_MAX:
        page = await hub.channels(prefix=prefix, cursor=cursor, limit=_PAGE, trusted=True)
        for count in page.channels:
            found = listed[count.channel] = {}
            if "subscription_count" in wanted:
                found["subscription_count"] = count.subscribers
            if "user_count" in wanted:
                found["user_count"] = len(await _users(hub, count.channel))
        if page.cursor is None:
            break
        cursor = page.cursor
    return _encoder.encode({"channels": listed})
