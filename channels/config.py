"""The engine's configuration: msgspec Structs, ``${VAR}`` substitution, loading and
validation.

The file also configures the server around the engine; `service.settings` extends these
Structs with what only the server reads.

Everything is checked before the event loop starts; a mistake is reported as a
``ConfigError`` that names its path, for example
``channels[1].history.size: Expected `int` >= 0``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping  # noqa: TC003 (msgspec reads SECRETS' type)
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final, Literal, Self

import msgspec

from channels.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = (
    "Access",
    "BrokerConfig",
    "ChannelRule",
    "Config",
    "Count",
    "History",
    "MAX_SECONDS",
    "PositiveCount",
    "PositiveSeconds",
    "Seconds",
    "Section",
    "ServerConfig",
    "Shape",
    "SlowConsumerPolicy",
)

KIB = 1024
SECONDS = 1.0

SlowConsumerPolicy = Literal["disconnect", "drop_oldest", "latest"]
"""What happens when a subscriber's outbox is full (see docs/configuration.md)."""

Access = Literal["anyone", "authenticated", "granted", "owner"]
"""Who may subscribe (or publish): any client, one with a valid token, one whose token
lists the channel in its ``channels`` claim, or the user whose id the ``*`` stands for."""

#: Characters allowed in a channel name; a rule's ``match`` may add ``*``.
CHANNEL_NAME_CHARS = r"A-Za-z0-9_\-:.@/=+,;#"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PATTERN_CHARS = re.compile(rf"[{CHANNEL_NAME_CHARS}*]+")
_KEY_FIRST = re.compile(r"([a-z_]+): ")
_PASSWORD_IN_URL = re.compile(r"^([a-z]+://[^:@/]*:)[^@/]*@")

Count = Annotated[int, msgspec.Meta(ge=0)]
PositiveCount = Annotated[int, msgspec.Meta(ge=1)]
#: The longest time a setting may name (ten years): far past any use, and it keeps
#: infinity out (Redis takes times as whole milliseconds).
MAX_SECONDS: Final = 10 * 365 * 24 * 3600 * SECONDS
Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]


class Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A section of the configuration file: an unknown key in it is an error."""


class History(Section, frozen=True):
    """How many published messages a channel keeps for ``history`` and recovery."""

    size: Count = 0
    """Messages kept per channel; 0 keeps none (offsets still count up)."""
    ttl_seconds: Seconds = 0 * SECONDS
    """Drop kept messages older than this; 0 keeps them until ``size`` pushes them out."""


class Shape(Section, frozen=True):
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


class ChannelRule(Section, frozen=True):
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
                f"match {self.match!r} may hold only letters, digits, '_-:.@/=+,;#' and '*'"
            )
        if "owner" in (self.subscribe, self.publish) and self.match.count("*") != 1:
            raise ValueError(
                f"owner access needs a match with one '*' (the user id): {self.match!r}"
            )


class ServerConfig(Section, frozen=True):
    """The engine's options for every connection: its outbox, its flushes, its limits.

    The server's own options (where it listens, HTTP limits, API keys, pings, logs) are
    in the same ``server:`` section of the file; the ASGI side declares them
    (`service.settings.ServerSettings`).
    """

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
    slow_consumer: SlowConsumerPolicy = "disconnect"
    recovery_max_messages: Count | None = None
    """A subscribe with ``since`` that missed more messages than this is not recovered.

    The default is 512, or ``outbox_messages`` when that is smaller; a value above
    ``outbox_messages`` is an error, since the replay must fit the outbox."""
    channel_name_max_length: PositiveCount = 255
    max_subscriptions: PositiveCount = 256
    """Channels one connection may be subscribed to at once (error 207)."""
    idempotency_window_seconds: PositiveSeconds = 300 * SECONDS
    """How long a publish's ``idempotency_key`` is remembered on its channel: a second
    publish with the same key within this time is not published again."""
    broadcast_max_channels: PositiveCount = 1000
    """Channels one broadcast may publish to (error 209 beyond)."""

    def __post_init__(self) -> None:
        if self.recovery_max_messages is not None and (
            self.recovery_max_messages > self.outbox_messages
        ):
            raise ValueError("recovery_max_messages: must not exceed outbox_messages")

    @property
    def recovery_limit(self) -> int:
        """The effective ``recovery_max_messages``."""
        if self.recovery_max_messages is None:
            return min(512, self.outbox_messages)
        return self.recovery_max_messages


class BrokerConfig(Section, frozen=True):
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


def _open_rules() -> list[ChannelRule]:
    return [ChannelRule(match="*")]


class Config(Section, frozen=True):
    """The engine's configuration: ``Config()`` is the built-in default.

    The configuration file holds more than the engine reads (where the server listens,
    its HTTP API, tokens): the ASGI side's `service.settings.Settings` extends this
    class with those, and reads the file with the same `parse` and `load`.
    """

    #: Where the file holds secrets, each written as a ``${VAR}`` reference, with what
    #: to call one in an error: ``{"auth.secret": "secret"}``; a list's items count too.
    SECRETS: ClassVar[Mapping[str, str]] = {}

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    broker: BrokerConfig = msgspec.field(default_factory=BrokerConfig)
    channels: list[ChannelRule] = msgspec.field(default_factory=_open_rules)
    """Channel rules; an exact ``match`` wins over patterns, patterns go in file order."""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for rule in self.channels:
            if rule.match in seen:
                raise ValueError(f"two channel rules match {rule.match!r}")
            seen.add(rule.match)
        _check_shadowed(self.channels)
        longest = self.server.channel_name_max_length
        for index, rule in enumerate(self.channels):
            if len(rule.match.replace("*", "")) > longest:
                raise ValueError(
                    f"channels[{index}] is never used: it matches only names longer than "
                    f"server.channel_name_max_length ({longest})"
                )

    @classmethod
    def parse(cls, data: bytes | str, *, env: Mapping[str, str], source: str = "<config>") -> Self:
        """Decode and validate a YAML document.

        Args:
            data: the YAML text. An empty document gives the built-in default.
            env: where ``${VAR}`` references are looked up.
            source: a name for the document in error messages.

        Raises:
            ConfigError: on YAML syntax, a missing variable, a secret written in the file,
                an unknown key, a wrong type or a bad value; the message names the path.
        """
        try:
            raw = msgspec.yaml.decode(data)
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if raw is None:
            raw = {}
        try:
            _check_secrets(raw, cls.SECRETS)
            return msgspec.convert(_substitute(raw, "", env), cls)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).rpartition(" - at `$")
            if not message:
                raise ConfigError(f"{source}: {exc}") from None
            where = where.strip("`.")
            key = _KEY_FIRST.match(message)  # a check of one key names it first
            if key is not None:
                where, message = f"{where}.{key[1]}".lstrip("."), message[key.end() :]
            raise ConfigError(f"{source}: {where or '(top level)'}: {message}") from None

    @classmethod
    def load(cls, path: Path | str | None, *, env: Mapping[str, str] | None = None) -> Self:
        """Read the configuration file at *path*, or the default when *path* is None.

        This does blocking file I/O: call it before the event loop starts.

        Raises:
            ConfigError: if the file cannot be read or is invalid.
        """
        if path is None:
            return cls()
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        return cls.parse(data, env=os.environ if env is None else env, source=str(path))

    def dump(self) -> str:
        """Render the configuration as YAML, with every secret and password redacted."""
        builtins = msgspec.to_builtins(self)
        for where in self.SECRETS:
            for values, key, _ in _sections_of(builtins, where):
                if isinstance(values.get(key), list):
                    values[key] = ["<redacted>"] * len(values[key])
                elif values.get(key) is not None:
                    values[key] = "<redacted>"
        if self.broker.url is not None:
            builtins["broker"]["url"] = _PASSWORD_IN_URL.sub(r"\1<redacted>@", self.broker.url)
        return msgspec.yaml.encode(builtins).decode()


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


def _check_secrets(raw: Any, secrets: Mapping[str, str]) -> None:
    """Refuse secrets written in the file itself: they come from the environment.

    *secrets* maps ``section.key`` to what to call the value in the error.
    """
    for where, noun in secrets.items():
        for values, key, at in _sections_of(raw, where):
            _check_secret(values.get(key), f"{at}.{key}", noun)


def _check_secret(value: Any, where: str, noun: str) -> None:
    items = enumerate(value) if isinstance(value, list) else [(None, value)]
    for index, item in items:
        if isinstance(item, str) and not _ENV_REF.fullmatch(item):
            path = where if index is None else f"{where}[{index}]"
            raise ConfigError(
                f"{path}: write the {noun} as a ${{VAR}} reference; "
                "secrets come from the environment, not from the file"
            )


def _sections_of(document: Any, where: str) -> list[tuple[dict[str, Any], str, str]]:
    """The sections of *document* that ``section.key`` *where* names, each with the key
    and its path: one section, or each item of a section that is a list (``webhooks[0]``);
    none when the document has none."""
    section, _, key = where.partition(".")
    values = document.get(section) if isinstance(document, dict) else None
    if isinstance(values, list):
        return [
            (item, key, f"{section}[{index}]")
            for index, item in enumerate(values)
            if isinstance(item, dict)
        ]
    return [(values, key, section)] if isinstance(values, dict) else []
