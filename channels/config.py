"""The YAML configuration: msgspec Structs, ``${VAR}`` substitution, loading and validation.

Everything is checked before the event loop starts; a mistake is reported as a
``ConfigError`` that names its path, for example
``channels[1].history.size: Expected `int` >= 0``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

import msgspec

from channels.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = (
    "Access",
    "Algorithm",
    "AuthConfig",
    "BrokerConfig",
    "ChannelRule",
    "Config",
    "ConfigSource",
    "History",
    "LogLevel",
    "ServerConfig",
    "Shape",
    "SlowConsumerPolicy",
    "dump_config",
    "load_config",
    "parse_bind",
    "parse_config",
)

KIB = 1024
MIB = 1024 * KIB
SECONDS = 1.0

SlowConsumerPolicy = Literal["disconnect", "drop_oldest", "latest"]
"""What happens when a subscriber's outbox is full (see docs/configuration.md)."""

LogLevel = Literal["debug", "info", "warning", "error"]

Access = Literal["anyone", "authenticated", "granted", "owner"]
"""Who may subscribe (or publish): any client, one with a valid token, one whose token
lists the channel in its ``channels`` claim, or the user whose id the ``*`` stands for."""

#: Characters allowed in a channel name; a rule's ``match`` may add ``*``.
CHANNEL_NAME_CHARS = r"A-Za-z0-9_\-:.@/=+"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATTERN_CHARS = re.compile(rf"[{CHANNEL_NAME_CHARS}*]+")
_PASSWORD_IN_URL = re.compile(r"^([a-z]+://[^:@/]*:)[^@/]*@")
_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")
_BIND = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+):(?P<port>[0-9]{1,5})")

Count = Annotated[int, msgspec.Meta(ge=0)]
PositiveCount = Annotated[int, msgspec.Meta(ge=1)]
#: The longest time a setting may name (ten years): far past any use, and it keeps
#: infinity out (Redis takes times as whole milliseconds).
MAX_SECONDS: Final = 10 * 365 * 24 * 3600 * SECONDS
Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class History(_Base, frozen=True):
    """How many published messages a channel keeps for ``history`` and recovery."""

    size: Count = 0
    """Messages kept per channel; 0 keeps none (offsets still count up)."""
    ttl_seconds: Seconds = 0 * SECONDS
    """Drop kept messages older than this; 0 keeps them until ``size`` pushes them out."""


class Shape(_Base, frozen=True):
    """The shape of a message's ``data`` (or of one of its fields), checked on publish."""

    type: Literal["object", "array", "string", "integer", "number", "boolean", "null"]
    fields: dict[str, Shape] | None = None
    """object: its fields; any other key is refused."""
    items: Shape | None = None
    """array: the shape of every item."""
    optional: bool = False
    """As an object's field: it may be left out."""
    enum: list[str | int] | None = None
    """string or integer: the only values allowed."""
    minimum: float | None = None
    maximum: float | None = None
    """integer or number: the bounds, inclusive."""
    min_length: Count | None = None
    max_length: Count | None = None
    """string: characters; array: items."""
    pattern: str | None = None
    """string: a regular expression the whole value must match."""

    def __post_init__(self) -> None:
        if (self.type == "object") != (self.fields is not None):
            raise ValueError("fields is for type: object, and an object needs fields")
        if (self.type == "array") != (self.items is not None):
            raise ValueError("items is for type: array, and an array needs items")
        if self.enum is not None and self.type not in {"string", "integer"}:
            raise ValueError("enum is for type: string or integer")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                message = f"pattern {self.pattern!r} is not a regular expression: {exc}"
                raise ValueError(message) from None


class ChannelRule(_Base, frozen=True):
    """What applies to the channels whose name matches ``match``."""

    match: Annotated[str, msgspec.Meta(min_length=1)]
    """An exact channel name, or a pattern where ``*`` matches any run of characters."""
    publish: bool | Literal["authenticated", "granted", "owner"] = True
    """Which WebSocket clients may publish: ``true`` any, ``false`` none (the HTTP API with
    a key always may), or an `Access` level."""
    subscribe: Access = "anyone"
    """Which clients may subscribe."""
    private: bool = False
    """Subscribing also needs a subscription token for the channel, signed by the backend."""
    history: History = msgspec.field(default_factory=History)
    max_message_bytes: PositiveCount = 64 * KIB
    """Largest ``data`` (encoded JSON) a message on these channels may carry."""
    slow_consumer: SlowConsumerPolicy | None = None
    """Overrides ``server.slow_consumer`` for these channels."""
    data: Shape | None = None
    """The shape every message's ``data`` must have (error 208 otherwise); any without."""
    presence: bool = False
    """Keep who is subscribed, for ``presence`` requests and ``GET /api/presence``."""
    join_leave: bool = False
    """Send ``join`` and ``leave`` events to the subscribers when a client comes or goes."""

    def __post_init__(self) -> None:
        if not _PATTERN_CHARS.fullmatch(self.match):
            raise ValueError(
                f"match {self.match!r} may hold only letters, digits, '_-:.@/=+' and '*'"
            )
        if "owner" in (self.subscribe, self.publish) and self.match.count("*") != 1:
            raise ValueError(
                f"owner access needs a match with one '*' (the user id): {self.match!r}"
            )


class ServerConfig(_Base, frozen=True):
    """Options of the node: where it listens and the per-connection limits."""

    bind: str = "127.0.0.1:8000"
    """HOST:PORT to listen on (``[::1]:8000`` for IPv6)."""
    listen_backlog: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 4096
    """Connections the kernel holds for the server to accept (``listen()``'s backlog).

    A connection that finds the queue full is dropped and retried by the client's TCP
    after 1 s, 3 s, 7 s...; under a burst of connections the server then seems not to
    answer. Linux caps the value at ``net.core.somaxconn`` (4096 since Linux 5.4)."""
    websocket_path: str = "/ws"
    outbox_messages: PositiveCount = 1024
    """Messages (and replies) queued per connection before the slow-consumer policy applies."""
    frame_max_bytes: PositiveCount = 64 * KIB
    """Messages waiting together are coalesced into one frame of at most this size."""
    flush_delay_seconds: Seconds = 0.005 * SECONDS
    """Least time between two flushes; the first message after a quiet spell goes at once."""
    flush_batch_connections: PositiveCount | None = None
    """Connections the flusher serves between two turns of the tasks that read and publish.

    The default is measured: 32 connections whose frames it writes itself, or 8 whose
    writer tasks it wakes (where frames go through ASGI)."""
    writer_linger_seconds: Seconds = 1 * SECONDS
    """Where frames go through ASGI: how long an idle writer task waits before it ends."""
    max_request_bytes: PositiveCount = 1 * MIB
    """Largest WebSocket frame a client may send (close 1009) or HTTP body (413)."""
    slow_consumer: SlowConsumerPolicy = "disconnect"
    recovery_max_messages: Count | None = None
    """A subscribe with ``since`` that missed more messages than this is not recovered.

    The default is 512, or ``outbox_messages`` when that is smaller; a value above
    ``outbox_messages`` is an error, since the replay must fit the outbox."""
    channel_name_max_length: PositiveCount = 255
    max_connections: PositiveCount = 100_000
    """WebSocket connections per node; more are refused (HTTP 503, code 112)."""
    max_connections_per_address: PositiveCount | None = None
    """WebSocket connections per client IP address; more are refused (HTTP 429, 113).

    Off by default: behind a proxy every client has the proxy's address."""
    max_subscriptions: PositiveCount = 256
    """Channels one connection may be subscribed to at once (error 207)."""
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
    idempotency_window_seconds: PositiveSeconds = 300 * SECONDS
    """How long a publish's ``idempotency_key`` is remembered on its channel: a second
    publish with the same key within this time is not published again."""
    log_level: LogLevel = "info"
    """The least important log lines written (``clarion serve --log-level`` overrides)."""
    log_format: Literal["human", "json"] = "human"
    """``human``: one readable line per event; ``json``: one JSON object per line."""

    def __post_init__(self) -> None:
        parse_bind(self.bind)
        if not self.websocket_path.startswith("/"):
            raise ValueError(f"websocket_path {self.websocket_path!r} must start with '/'")
        if self.websocket_path in {
            "/health",
            "/ready",
            "/metrics",
            "/api/publish",
            "/api/presence",
            "/api/reload",
            "/api/stats",
        }:
            raise ValueError(f"websocket_path {self.websocket_path!r} is taken by the HTTP API")
        if self.recovery_max_messages is not None and (
            self.recovery_max_messages > self.outbox_messages
        ):
            raise ValueError("recovery_max_messages must not exceed outbox_messages")
        if any(not key for key in self.api_keys):
            raise ValueError("an API key is empty")
        if self.api_open and self.api_keys:
            raise ValueError("api_open: true and api_keys both set: an API with keys is not open")

    @property
    def recovery_limit(self) -> int:
        """The effective ``recovery_max_messages``."""
        if self.recovery_max_messages is None:
            return min(512, self.outbox_messages)
        return self.recovery_max_messages


class BrokerConfig(_Base, frozen=True):
    """Which broker carries messages: ``memory`` (one process) or ``redis`` (many nodes)."""

    kind: Literal["memory", "redis"] = "memory"
    url: str | None = None
    """Redis only: ``redis://[:PASSWORD@]HOST:PORT/DB``, ``rediss://...`` or ``unix://PATH``.

    The default is ``redis://127.0.0.1:6379/0``; write a password as a ``${VAR}``."""
    prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "clarion"
    """Redis only: starts every key and pub/sub name, so deployments can share a Redis."""
    stream_idle_seconds: PositiveSeconds = 3600 * SECONDS
    """Redis only: how long a channel's epoch and offsets outlive its last activity.

    Activity is a publish, or a node holding subscribers (nodes refresh it); kept
    messages live no longer than this either."""
    timeout_seconds: PositiveSeconds = 5 * SECONDS
    """Redis only: a Redis call that takes longer fails (a publish with error 301)."""
    presence_ttl_seconds: PositiveSeconds = 30 * SECONDS
    """Redis only: the clients of a node that died leave presence after at most this.

    Each node refreshes its own clients' entries three times per period."""
    check_seconds: PositiveSeconds = 1 * SECONDS
    """Redis only: how often a node checks Redis (``GET /ready``) and catches up.

    While Redis is down, also the longest pause between two reconnects of the pub/sub
    connection (5 s at most): readiness follows Redis's recovery within about this."""

    def __post_init__(self) -> None:
        if self.kind == "memory" and self.url is not None:
            raise ValueError("url is for kind: redis; the memory broker has none")
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url must start with redis://, rediss:// or unix://")

    @property
    def redis_url(self) -> str:
        """The Redis URL to connect to."""
        return self.url or "redis://127.0.0.1:6379/0"


Algorithm = Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
"""A JWT signing algorithm Clarion accepts; ``none`` is not one of them."""


class AuthConfig(_Base, frozen=True):
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
                raise ValueError(f"secret: {self.algorithms} need at least {needed} bytes")
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


def _open_rules() -> list[ChannelRule]:
    return [ChannelRule(match="*")]


class Config(_Base, frozen=True):
    """The whole configuration file. ``Config()`` is the built-in default."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    auth: AuthConfig | None = None
    """Connection authentication; without it every connection is anonymous."""
    channels: list[ChannelRule] = msgspec.field(default_factory=_open_rules)
    """Channel rules; an exact ``match`` wins over patterns, patterns go in file order."""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.channels:
            if rule.match in seen:
                raise ValueError(f"two channel rules match {rule.match!r}")
            seen.add(rule.match)
        _check_shadowed(self.channels)
        server = self.server
        longest = server.channel_name_max_length
        for index, rule in enumerate(self.channels):
            if len(rule.match.replace("*", "")) > longest:
                raise ValueError(
                    f"channels[{index}] is never used: it matches only names longer than "
                    f"server.channel_name_max_length ({longest})"
                )
        if self.auth is not None and self.auth.required and not server.api_keys:
            if not server.api_open:
                raise ValueError(
                    "auth.required is set but server.api_keys is empty, so the HTTP API would "
                    "let anyone in: set server.api_keys, or server.api_open: true to declare "
                    "the API open on purpose"
                )


def _check_shadowed(rules: list[ChannelRule]) -> None:
    """Refuse a pattern rule that an earlier pattern always wins over: it never applies.

    An exact ``match`` wins over every pattern, so only patterns can be shadowed.

    Raises:
        ValueError: naming both rules.
    """
    patterns = [(index, rule.match) for index, rule in enumerate(rules) if "*" in rule.match]
    for position, (index, match) in enumerate(patterns):
        for earlier_index, earlier in patterns[:position]:
            if _covers(earlier, match):
                raise ValueError(
                    f"channels[{index}] is never used: channels[{earlier_index}] "
                    f'("{earlier}") matches every name it matches'
                )


def _covers(pattern: str, other: str) -> bool:
    """Whether glob *pattern* matches every name glob *other* matches.

    *other*'s ``*`` becomes a character no name has, which only a ``*`` of *pattern* can
    take: if *pattern* then matches it, it matches whatever the ``*`` stands for.
    """
    regex = ".*".join(map(re.escape, pattern.split("*")))
    return re.fullmatch(regex, other.replace("*", "\x00"), re.DOTALL) is not None


def parse_bind(bind: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[V6]:PORT``) into host and port.

    Raises:
        ValueError: if *bind* has another form or the port is out of range.
    """
    found = _BIND.fullmatch(bind)
    if found is None or int(found["port"]) > 65535:
        raise ValueError(f"bind {bind!r} must look like HOST:PORT, e.g. 127.0.0.1:8000")
    host = found["host"].strip("[]")
    address = _address_of(host)
    if address is not None and (address.is_multicast or address == _BROADCAST):
        kind = "multicast" if address.is_multicast else "broadcast"
        raise ValueError(
            f"bind {bind!r}: {host} is a {kind} address; a server listens on one of its own"
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


def _substitute(value: Any, path: str, env: Mapping[str, str]) -> Any:
    """Replace every ``${VAR}`` in the strings of *value*, naming *path* on a miss."""
    if isinstance(value, str):

        def lookup(found: re.Match[str]) -> str:
            name = found[1]
            if name not in env:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return env[name]

        return _ENV_REF.sub(lookup, value)
    if isinstance(value, dict):
        return {
            key: _substitute(item, f"{path}.{key}".lstrip("."), env) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_substitute(item, f"{path}[{index}]", env) for index, item in enumerate(value)]
    return value


def _check_secrets(raw: Any) -> None:
    """Refuse secrets written in the file itself: they must come from the environment."""
    auth = raw.get("auth") if isinstance(raw, dict) else None
    secret = auth.get("secret") if isinstance(auth, dict) else None
    if isinstance(secret, str) and not _ENV_REF.fullmatch(secret):
        raise ConfigError(
            "auth.secret: write the secret as a ${VAR} reference; "
            "secrets come from the environment, not from the file"
        )
    server = raw.get("server") if isinstance(raw, dict) else None
    keys = server.get("api_keys") if isinstance(server, dict) else None
    for index, key in enumerate(keys if isinstance(keys, list) else []):
        if isinstance(key, str) and not _ENV_REF.fullmatch(key):
            raise ConfigError(
                f"server.api_keys[{index}]: write the key as a ${{VAR}} reference; "
                "secrets come from the environment, not from the file"
            )


def parse_config(data: bytes | str, *, env: Mapping[str, str], source: str = "<config>") -> Config:
    """Decode and validate a YAML document into a `Config`.

    Args:
        data: the YAML text. An empty document gives the built-in default.
        env: where ``${VAR}`` references are looked up.
        source: a name for the document in error messages.

    Raises:
        ConfigError: on YAML syntax, a missing variable, a literal API key, an unknown key,
            a wrong type or a bad value; the message names the path.
    """
    try:
        raw = msgspec.yaml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    try:
        _check_secrets(raw)
        return msgspec.convert(_substitute(raw, "", env), Config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at `$")
        if not message:
            raise ConfigError(f"{source}: {exc}") from None
        raise ConfigError(f"{source}: {where.strip('`.') or '(top level)'}: {message}") from None


def load_config(path: Path | str | None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read the configuration file at *path*, or return the default when *path* is None.

    This does blocking file I/O: call it before the event loop starts.

    Raises:
        ConfigError: if the file cannot be read or is invalid.
    """
    if path is None:
        return Config()
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return parse_config(data, env=os.environ if env is None else env, source=str(path))


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

    def load(self) -> Config:
        """Read the configuration (blocking file I/O).

        Raises:
            ConfigError: if the file cannot be read or is invalid, or *bind* is.
        """
        config = load_config(self.path)
        server = config.server
        if self.bind is not None:
            try:
                parse_bind(self.bind)
            except ValueError as exc:
                raise ConfigError(f"--bind: {exc}") from None
            server = msgspec.structs.replace(server, bind=self.bind)
        if self.log_level is not None:
            server = msgspec.structs.replace(server, log_level=self.log_level)
        return msgspec.structs.replace(config, server=server)


def dump_config(config: Config) -> str:
    """Render *config* as YAML, with every API key redacted."""
    builtins = msgspec.to_builtins(config)
    builtins["server"]["api_keys"] = ["<redacted>"] * len(config.server.api_keys)
    if config.auth is not None and config.auth.secret is not None:
        builtins["auth"]["secret"] = "<redacted>"
    if config.broker.url is not None:
        builtins["broker"]["url"] = _PASSWORD_IN_URL.sub(r"\1<redacted>@", config.broker.url)
    return msgspec.yaml.encode(builtins).decode()
