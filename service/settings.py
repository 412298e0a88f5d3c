"""The configuration file as the server reads it: the engine's `Config` and the server's
own settings (where it listens, HTTP limits, API keys, pings, tokens, logs).

One YAML file holds both: its ``server:`` section takes the keys of `ServerConfig` and of
`ServerSettings` alike, and ``auth:`` is the server's alone. The engine gets the same
object, and reads only what it declares.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping, Sequence  # noqa: TC003 (msgspec reads SECRETS' type)
from typing import Annotated, ClassVar, Final, Literal
from urllib.parse import urlsplit

import msgspec

from channels.activity import ActivityName  # noqa: TC001 - msgspec reads Struct annotations at runtime
from channels.config import (
    KIB,
    SECONDS,
    ChannelRule,
    Config,
    PositiveCount,
    PositiveSeconds,
    Seconds,
    Section,
    ServerConfig,
)
from channels.errors import ConfigError

__all__ = (
    "Algorithm",
    "AppSettings",
    "AppWebhookSettings",
    "AuthSettings",
    "ConfigSource",
    "LogLevel",
    "PusherWebhookName",
    "ServerSettings",
    "Settings",
    "WebhookDelivery",
    "WebhookSettings",
    "parse_bind",
)

MIB = 1024 * KIB

LogLevel = Literal["debug", "info", "warning", "error"]

Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
"""A JWT signing algorithm Clarion accepts; ``none`` is not one of them."""

_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")
_BIND = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(?P<port>[0-9]{1,5})")


class ServerSettings(ServerConfig, frozen=True):
    """The ``server:`` section: the engine's options and the node's own."""

    bind: str = "127.0.0.1:8000"
    """HOST:PORT to listen on (``[::1]:8000`` for IPv6)."""
    listen_backlog: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 4096
    """Connections the kernel holds for the server to accept (``listen()``'s backlog).

    A connection that finds the queue full is dropped and retried by the client's TCP
    after 1 s, 3 s, 7 s...; under a burst of connections the server then seems not to
    answer. Linux caps the value at ``net.core.somaxconn`` (4096 since Linux 5.4)."""
    websocket_path: str = "/ws"
    max_request_bytes: PositiveCount = 1 * MIB
    """Largest WebSocket frame a client may send (close 1009) or HTTP body (413)."""
    batch_max_requests: PositiveCount = 100
    """Requests one ``POST /api/batch`` may hold (400, code 101, beyond)."""
    max_connections: PositiveCount = 100_000
    """WebSocket connections per node; more are refused (HTTP 503, code 112)."""
    max_connections_per_address: PositiveCount | None = None
    """WebSocket connections per client IP address; more are refused (HTTP 429, 113).

    Off by default: behind a proxy every client has the proxy's address."""
    publish_rate_per_second: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Publishes per second one connection may sustain (a token bucket; error 114).

    Off by default: a backend publishing over one WebSocket may need thousands a
    second. Set it for browser-facing deployments (the production checklist does)."""
    publish_burst: PositiveCount = 50
    """Publishes one connection may make at once before the rate applies."""
    write_timeout_seconds: PositiveSeconds = 30 * SECONDS
    """A client that accepts no data for this long is disconnected (TCP_USER_TIMEOUT)."""
    handshake_timeout_seconds: PositiveSeconds = 10 * SECONDS
    """A connection must send a whole HTTP request (the WebSocket handshake, or an API
    call) within this long of opening, or of its previous request, or it is closed."""
    ping_interval_seconds: PositiveSeconds | None = 25 * SECONDS
    """After this long without a frame from a client, the server sends it a ``ping``;
    null: no pings, and a quiet client is never closed."""
    pong_timeout_seconds: PositiveSeconds = 10 * SECONDS
    """A client that sends nothing (a ``pong``, or any request) for this long after a
    ping is taken for dead and closed with 4002."""
    shutdown_grace_seconds: Seconds = 5 * SECONDS
    """How long shutdown waits for clients to receive their queued messages and close 1001."""
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    """Browser origins (``https://app.example.com``) allowed to open WebSockets from
    another site. When set, or when a token comes in the query string, a handshake whose
    ``Origin`` is neither listed nor the server's own host is refused (403)."""
    api_keys: list[str] = msgspec.field(default_factory=list)
    """Keys for the HTTP API, each written as a ``${VAR}`` reference."""
    api_open: bool = False
    """Declare the HTTP API open on purpose: without keys, anyone who reaches it may
    publish and read where anonymous clients may. Needed for an open API when
    ``auth.required`` is set, which otherwise refuses to start without ``api_keys``."""
    log_level: LogLevel = "info"
    """The least important log lines written (``clarion serve --log-level`` overrides)."""
    log_format: Literal["human", "json"] = "human"
    """``human``: one readable line per event; ``json``: one JSON object per line."""

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_bind(self.bind)
        except ValueError as exc:
            raise ValueError(f"bind: {exc}") from None
        if not self.websocket_path.startswith("/"):
            raise ValueError(f"websocket_path: {self.websocket_path!r} must start with '/'")
        # Here, not at the top: the settings are read (by `clarion check`) without
        # loading the HTTP side (prometheus-client, PyJWT) for the route table.
        from service.httpapi import api_paths

        if self.websocket_path in api_paths():
            raise ValueError(f"websocket_path: {self.websocket_path!r} is taken by the HTTP API")
        if any(not key for key in self.api_keys):
            raise ValueError("an API key is empty")
        if self.api_open and self.api_keys:
            raise ValueError("api_open: true and api_keys both set: an API with keys is not open")


class AuthSettings(Section, frozen=True):
    """Connection authentication with JSON Web Tokens (see docs/security.md)."""

    required: bool = False
    """Refuse WebSocket connections without a valid token (HTTP 401)."""
    algorithms: Annotated[list[Algorithm], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["HS256"]
    )
    """The only algorithms a token may be signed with."""
    secret: str | None = None
    """HS* algorithms: the shared secret, written as a ``${VAR}`` reference."""
    public_key_file: str | None = None
    """RS*/ES* algorithms: a PEM file with the public key."""
    jwks_file: str | None = None
    """RS*/ES* algorithms, instead of ``public_key_file``: a JSON Web Key Set file
    (``{"keys": [...]}``); a token's ``kid`` header picks its key."""
    audience: str | None = None
    """When set, a token's ``aud`` must include it."""
    issuer: str | None = None
    """When set, a token's ``iss`` must equal it."""
    leeway_seconds: Seconds = 0 * SECONDS
    """Clock skew allowed when checking ``exp`` and ``nbf``."""

    def __post_init__(self) -> None:
        symmetric = any(name.startswith("HS") for name in self.algorithms)
        asymmetric = any(not name.startswith("HS") for name in self.algorithms)
        if symmetric and asymmetric:
            raise ValueError("algorithms: use HS* or RS*/ES* algorithms, not both")
        if symmetric and not self.secret:
            raise ValueError("HS* algorithms need a secret (a ${VAR} reference)")
        if symmetric and self.secret:
            # RFC 7518 3.2: a key at least as long as the hash (HS256: 32 bytes).
            needed = max(int(name[2:]) // 8 for name in self.algorithms)
            if len(self.secret.encode()) < needed:
                names = ", ".join(self.algorithms)
                raise ValueError(f"secret: {names} needs a secret of at least {needed} bytes")
        if asymmetric and not (self.public_key_file or self.jwks_file):
            raise ValueError("RS*/ES* algorithms need public_key_file or jwks_file")
        if self.public_key_file and self.jwks_file:
            raise ValueError("use public_key_file or jwks_file, not both")
        if symmetric and (self.public_key_file or self.jwks_file):
            raise ValueError("public_key_file and jwks_file are for RS*/ES* algorithms")

    @property
    def enabled(self) -> bool:
        """Whether tokens are checked at all (a key is configured)."""
        return bool(self.secret or self.public_key_file or self.jwks_file)


class WebhookDelivery(Section, frozen=True):
    """Where and how a webhook endpoint's events are POSTed: batches, retries, bounds."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/?#]+(/\S*)?$")]
    """``http://`` or ``https://`` (verified against the system's certificates)."""
    batch_seconds: Seconds = 0.1 * SECONDS
    """How long events are collected into one POST after the first of them."""
    batch_max_events: PositiveCount = 100
    """Events one POST holds at most."""
    timeout_seconds: PositiveSeconds = 5 * SECONDS
    """How long one attempt may take: connecting, sending, and reading the answer."""
    retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5
    """Attempts after the first, for an error or a status other than 2xx, with backoff."""
    queue_events: PositiveCount = 10_000
    """Events waiting at most; more are dropped and counted (never blocking a publish)."""
    queue_bytes: PositiveCount = 16 * MIB
    """The published data (``client_published`` events) waiting at most, in bytes; an
    event beyond is dropped and counted."""

    def __post_init__(self) -> None:
        try:
            url = urlsplit(self.url)
            url.port  # noqa: B018 - raises for a port that is not a number, or out of range
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        if not url.hostname:
            raise ValueError("url: names no host")


class WebhookSettings(WebhookDelivery, frozen=True, kw_only=True):
    """One webhook endpoint: where to POST which events, signed with which secret."""

    events: Annotated[list[ActivityName], msgspec.Meta(min_length=1)]
    secret: Annotated[str, msgspec.Meta(min_length=16)]
    """Signs each body (HMAC-SHA256, the ``X-Clarion-Signature`` header); from ``${ENV}``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_listed_once(self.events)


PusherWebhookName = Literal[
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
]
"""The events of Pusher's webhooks that Clarion sends."""


class AppWebhookSettings(WebhookDelivery, frozen=True, kw_only=True):
    """One webhook endpoint of an app of the Pusher door: Pusher's events, in Pusher's
    format, signed with the app's secret (``X-Pusher-Key``, ``X-Pusher-Signature``)."""

    events: Annotated[list[PusherWebhookName], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_listed_once(self.events)


def _check_listed_once(events: Sequence[str]) -> None:
    if len(set(events)) != len(events):
        raise ValueError("events: an event is listed twice")


class AppSettings(Section, frozen=True):
    """One application reached through the Pusher door (see docs/pusher.md): its
    credentials, its limits and its channels, apart from every other app's."""

    id: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,20}$")]
    """The app id of the Pusher HTTP API's paths (``/apps/{id}/events``): digits, as the
    Pusher libraries require."""
    key: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    """The public key clients connect with (``/app/{key}``)."""
    secret: Annotated[str, msgspec.Meta(min_length=16)]
    """Signs channel authorizations, user sign-ins, API requests and webhooks; from
    ``${ENV}``."""
    default: bool = False
    """This app is the server's own: the channels of Clarion's protocol (``/ws``,
    ``/api/...``), its ``channels`` rules and limits. One app at most."""
    client_events: bool = False
    """Whether clients may send ``client-*`` events on private and presence channels."""
    client_event_rate_per_second: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """Client events one connection may send per second (a token bucket of as many);
    beyond, the connection is closed with 4301."""
    max_connections: PositiveCount | None = None
    """WebSocket connections of this app per node; more are refused with 4004."""
    backend_events_per_second: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """Events the app's backend may send per second through the HTTP API on this node,
    counted per channel (a token bucket of a second's worth); beyond, 429 (code 114).
    Off by default."""
    max_channels_per_connection: PositiveCount | None = None
    """Channels one connection may be subscribed to; ``server.max_subscriptions`` by
    default (and always, for the default app)."""
    activity_timeout_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 120
    """Told to clients at connection: after this long without a message from the
    server, a client pings it. A client silent for this long is pinged by the server,
    and closed with 4201 if it does not answer within ``server.pong_timeout_seconds``."""
    channels: list[ChannelRule] | None = None
    """The app's channel rules; the top level's ``channels`` when unset."""
    webhooks: list[AppWebhookSettings] = msgspec.field(default_factory=list)
    """Where to tell the app's backend what happened, as Pusher's webhooks do."""


class Settings(Config, frozen=True):
    """The whole configuration file. ``Settings()`` is the built-in default: every
    channel open, the memory broker, bound to 127.0.0.1:8000.

    ``Settings.load(path)`` reads a file, ``Settings.parse(text, env=...)`` a document,
    and ``dump()`` renders one with its secrets redacted (see `Config`).
    """

    SECRETS: ClassVar[Mapping[str, str]] = {
        "auth.secret": "secret",
        "server.api_keys": "key",
        "webhooks.secret": "webhook secret",
        "apps.secret": "app secret",
    }

    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    auth: AuthSettings | None = None
    """Connection authentication; without it every connection is anonymous."""
    webhooks: list[WebhookSettings] = msgspec.field(default_factory=list)
    """Where to tell the application what happened (see `service.webhooks`)."""
    apps: list[AppSettings] = msgspec.field(default_factory=list)
    """The applications of the Pusher door (see docs/pusher.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_apps(self.apps)
        server = self.server
        required = self.auth is not None and self.auth.required
        if required and not server.api_keys and not server.api_open:
            raise ValueError(
                "auth.required is set but server.api_keys is empty, so the HTTP API would "
                "let anyone in: set server.api_keys, or server.api_open: true to declare "
                "the API open on purpose"
            )

    def app_config(self, app: AppSettings) -> Config:
        """The engine's configuration for *app*'s own hub: its channel rules, and a
        Redis prefix of its own so that its channels are not another app's."""
        broker = msgspec.structs.replace(self.broker, prefix=f"{self.broker.prefix}.app.{app.id}")
        channels = self.channels if app.channels is None else app.channels
        server = self.server
        if app.max_channels_per_connection is not None:
            server = msgspec.structs.replace(
                server, max_subscriptions=app.max_channels_per_connection
            )
        return Config(server=server, broker=broker, channels=channels)


def _check_apps(apps: list[AppSettings]) -> None:
    """Refuse apps that share an id or a key, or more than one default app."""
    for name in ("id", "key"):
        values = [getattr(app, name) for app in apps]
        twice = sorted({value for value in values if values.count(value) > 1})
        if twice:
            raise ValueError(f"apps: two apps have the {name} {twice[0]!r}")
    if sum(app.default for app in apps) > 1:
        raise ValueError("apps: only one app may be the default one")
    for index, app in enumerate(apps):
        if app.default and app.channels is not None:
            raise ValueError(
                f"apps[{index}].channels: the default app's channels are the top level's"
            )
        if app.default and app.max_channels_per_connection is not None:
            raise ValueError(
                f"apps[{index}].max_channels_per_connection: the default app's limit is "
                "server.max_subscriptions"
            )
        if app.channels is not None:
            try:
                Config(channels=app.channels)
            except ValueError as exc:
                raise ValueError(f"apps[{index}].channels: {exc}") from None


class ConfigSource(msgspec.Struct, frozen=True, kw_only=True):
    """Where a node's configuration comes from, so that it can be read again on reload.

    Attributes:
        path: the YAML file; None for the built-in default.
        bind: ``server.bind`` given on the command line, which overrides the file's.
        log_level: ``server.log_level`` given on the command line, likewise.
    """

    path: str | None = None
    bind: str | None = None
    log_level: LogLevel | None = None

    def load(self) -> Settings:
        """Read the configuration (blocking file I/O).

        Raises:
            ConfigError: if the file cannot be read or is invalid, or *bind* is.
        """
        settings = Settings.load(self.path)
        server = settings.server
        if self.bind is not None:
            try:
                parse_bind(self.bind)
            except ValueError as exc:
                raise ConfigError(f"--bind: {exc}") from None
            server = msgspec.structs.replace(server, bind=self.bind)
        if self.log_level is not None:
            server = msgspec.structs.replace(server, log_level=self.log_level)
        return msgspec.structs.replace(settings, server=server)


def parse_bind(bind: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[V6]:PORT``) into host and port.

    Raises:
        ValueError: if *bind* has another form or the port is out of range.
    """
    found = _BIND.fullmatch(bind)
    if found is None or int(found["port"]) > 65535:
        raise ValueError(f"{bind!r} must look like HOST:PORT, e.g. 127.0.0.1:8000")
    host = found["host"].strip("[]")
    address = _address_of(host)
    if address is not None and (address.is_multicast or address == _BROADCAST):
        kind = "multicast" if address.is_multicast else "broadcast"
        raise ValueError(
            f"{bind!r}: {host} is a {kind} address; a server listens on one of its own"
        )
    return host, int(found["port"])


def _address_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address *host* names literally; None for a host name (it resolves when
    the server binds).

    The shorthand IPv4 forms that resolvers accept (``224.1``, ``0xe0000001``,
    ``3758096385``) count as addresses, and an IPv4-mapped IPv6 address as its IPv4 one.
    """
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):  # ValueError: a NUL in the name
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
