"""The wire protocol: client requests and server frames as msgspec Structs.

Client to server, one JSON object per WebSocket frame (text or binary)::

    {"type": "subscribe", "id": 1, "channel": "chat:1", "since": {"offset": 4, "epoch": "…"}}
    {"type": "unsubscribe", "id": 2, "channel": "chat:1"}
    {"type": "publish", "id": 3, "channel": "chat:1", "data": {"text": "hi"}}
    {"type": "history", "id": 4, "channel": "chat:1", "limit": 10, "since": 4}
    {"type": "ping", "id": 5}
    {"type": "pong"}

Server to client: ``reply``, ``error``, ``message``, ``gap``, ``join``, ``leave``,
``restart``, ``unsubscribed`` and ``ping`` objects (a ``ping`` asks the client for a
``pong``). A frame holds one object, or a JSON array of several when the writer coalesced
them. docs/protocol.md documents every field and code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, TypeVar

import msgspec

from channels.publication import ClientInfo  # noqa: TC001 - msgspec reads Struct annotations at runtime
from channels.statistics import ChannelStatistics  # noqa: TC001 - msgspec reads Struct annotations at runtime
from service.errors import BadJSON, BadMessage, RequestId, UnknownOp

if TYPE_CHECKING:
    from collections.abc import Mapping

    from channels.errors import ChannelsError
    from channels.publication import Publication

__all__ = (
    "AppStats",
    "ClientMessage",
    "Error",
    "Frame",
    "Gap",
    "History",
    "HistoryEntry",
    "HistoryReply",
    "Join",
    "Leave",
    "Message",
    "Ping",
    "Pong",
    "Presence",
    "PresenceReply",
    "Publish",
    "PublishReply",
    "Refresh",
    "ReloadReply",
    "Reply",
    "Restart",
    "ServerPing",
    "Since",
    "StatsReply",
    "Subscribe",
    "SubscribeReply",
    "TOO_DEEP",
    "Unsubscribe",
    "Unsubscribed",
    "WireEncoding",
    "decode_body",
    "decode_query",
    "decode_request",
    "encode",
    "encode_error",
    "encode_event",
    "encode_gap",
    "encode_message",
)

T = TypeVar("T")
Offset = Annotated[int, msgspec.Meta(ge=0)]
#: The longest ``idempotency_key`` a publish may carry, in characters.
IDEMPOTENCY_KEY_MAX_LENGTH: Final = 128
IdempotencyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH)]


# Client -> server -----------------------------------------------------------------------


class _Request(
    msgspec.Struct,
    tag_field="type",
    forbid_unknown_fields=True,
    omit_defaults=True,
    frozen=True,
    kw_only=True,
):
    """Base of the client's requests; a client (``service.client``) leaves unset fields out."""

    id: RequestId = None


class Since(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The last position a client saw: the ``offset`` and ``epoch`` of a channel's stream."""

    offset: Offset
    epoch: str


class Subscribe(_Request, tag="subscribe", frozen=True, kw_only=True):
    channel: str
    since: Since | None = None
    token: str | None = None


class Unsubscribe(_Request, tag="unsubscribe", frozen=True, kw_only=True):
    channel: str


class Publish(_Request, tag="publish", frozen=True, kw_only=True):
    channel: str
    data: msgspec.Raw
    idempotency_key: IdempotencyKey | None = None


class History(_Request, tag="history", frozen=True, kw_only=True):
    channel: str
    limit: Annotated[int, msgspec.Meta(ge=1)] | None = None
    since: Offset | None = None
    token: str | None = None
    """The subscription token of a ``private`` channel."""


class Ping(_Request, tag="ping", frozen=True, kw_only=True):
    pass


class Pong(_Request, tag="pong", frozen=True, kw_only=True):
    """The answer to the server's ``ping``; it gets no reply."""


class Presence(_Request, tag="presence", frozen=True, kw_only=True):
    channel: str
    token: str | None = None
    """The subscription token of a ``private`` channel."""


class Refresh(_Request, tag="refresh", frozen=True, kw_only=True):
    token: str


ClientMessage = Subscribe | Unsubscribe | Publish | History | Presence | Refresh | Ping | Pong
OPS = frozenset(
    ("subscribe", "unsubscribe", "publish", "history", "presence", "refresh", "ping", "pong")
)


class _Probe(msgspec.Struct):
    type: Any = None
    id: Any = None


#: msgspec decodes nested JSON recursively, up to Python's recursion limit.
TOO_DEEP: Final = (
    "not valid JSON: nested too deeply (arrays and objects nest at most a few hundred levels)"
)
_request_decoder: msgspec.json.Decoder[ClientMessage] = msgspec.json.Decoder(ClientMessage)
_probe_decoder = msgspec.json.Decoder(_Probe)


def decode_request(frame: str | bytes) -> ClientMessage:
    """Decode one client frame.

    Raises:
        BadJSON, BadMessage, UnknownOp: with the request's ``id`` when it could be read.
    """
    if isinstance(frame, bytes):
        _require_utf8(frame)
    try:
        return _request_decoder.decode(frame)
    except RecursionError:
        raise BadJSON(TOO_DEEP) from None
    except msgspec.ValidationError as exc:
        try:
            probe = _probe_decoder.decode(frame)
        except (msgspec.ValidationError, RecursionError):
            probe = _Probe()
        except msgspec.DecodeError as malformed:
            # The typed decoder can fail on a field before it reaches the end of a
            # truncated frame ('{"type":0'): the frame is not JSON at all.
            raise BadJSON(f"not valid JSON: {malformed}") from None
        request_id = probe.id if isinstance(probe.id, int | str) else None
        if probe.type is not None and not (isinstance(probe.type, str) and probe.type in OPS):
            name = repr(probe.type)[:100]
            raise UnknownOp(
                f"unknown operation {name}; use one of {', '.join(sorted(OPS))}", request_id
            ) from None
        raise BadMessage(_describe(exc), request_id) from None
    except msgspec.DecodeError as exc:
        raise BadJSON(f"not valid JSON: {exc}") from None


def decode_body(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """Decode an HTTP API request's *body* with *decoder*.

    Raises:
        BadJSON: for a body that is not JSON (or not UTF-8, or nested too deeply).
        BadMessage: for JSON that is not what *decoder* takes; the message names the field.
    """
    _require_utf8(body)
    try:
        return decoder.decode(body)
    except RecursionError:
        raise BadJSON(TOO_DEEP) from None
    except msgspec.ValidationError as exc:
        raise BadMessage(_describe(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadJSON(f"not valid JSON: {exc}") from None


def decode_query(kind: type[T], query: Mapping[str, str]) -> T:
    """Read a GET request's *query* as the request *kind*: its fields from the parameters
    of the same names (``"5"`` for an integer, ``1``/``true``/``0``/``false`` for a
    flag); other parameters are ignored.

    Raises:
        BadMessage: for a missing field or a value of the wrong kind; the message names it.
    """
    fields = {name: query[name] for name in kind.__struct_fields__ if name in query}  # type: ignore[attr-defined]  # a Struct type
    try:
        return msgspec.convert(fields, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise BadMessage(_describe(exc)) from None


def _require_utf8(data: bytes) -> None:
    """Refuse bytes that are not UTF-8, as JSON requires.

    msgspec checks the strings it decodes, but not a value it keeps as ``Raw``: without
    this, a binary frame or an HTTP body could publish ``data`` that no subscriber can
    decode (a text frame must be UTF-8) and that history would replay.
    """
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError as exc:
            raise BadJSON(f"not valid JSON: invalid UTF-8 at byte {exc.start}") from None


def _describe(exc: msgspec.ValidationError) -> str:
    """Turn msgspec's "Expected `int` - at `$.since`" into "since: Expected `int`"."""
    message, _, where = str(exc).rpartition(" - at `$")
    return f"{where.strip('`.')}: {message}" if message else str(exc)


# Server -> client -----------------------------------------------------------------------


class Frame(msgspec.Struct, tag_field="type", omit_defaults=True, frozen=True, kw_only=True):
    """Base of every object the server sends; ``type`` comes first, unset fields are left out."""


class Reply(Frame, tag="reply", frozen=True, kw_only=True):
    """The answer to a request that carries nothing more (unsubscribe, ping)."""

    id: RequestId = None


class SubscribeReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The answer to ``subscribe``: the stream position the subscription starts after."""

    id: RequestId = None
    channel: str
    offset: int
    epoch: str
    recovered: bool | None = None


class PublishReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The answer to ``publish`` (and the body of ``POST /api/publish``).

    ``duplicate`` is true when the publish's ``idempotency_key`` was seen on the channel
    within ``server.idempotency_window_seconds``: nothing was published, and the offset
    and epoch are the first publish's.
    """

    id: RequestId = None
    channel: str
    offset: int
    epoch: str
    duplicate: bool = False


class HistoryEntry(msgspec.Struct, frozen=True):
    offset: int
    data: msgspec.Raw


class HistoryReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The answer to ``history``: kept messages, oldest first."""

    id: RequestId = None
    channel: str
    offset: int
    epoch: str
    messages: list[HistoryEntry]


class PresenceReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The answer to ``presence`` (and the body of ``GET /api/presence``)."""

    id: RequestId = None
    channel: str
    clients: list[ClientInfo]


class AppStats(msgspec.Struct, frozen=True, kw_only=True):
    """One Pusher app's figures on this node, in ``GET /api/stats``."""

    id: str
    connections: int
    subscriptions: int
    channels: int
    published: int
    delivered: int


class StatsReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The body of ``GET /api/stats``: the node and its busiest channels (the dashboard's)."""

    ready: bool
    reason: str | None
    """Why the node is not ready (as ``GET /ready`` says), or None."""
    broker: str
    websocket_path: str
    uptime_seconds: float
    connections: int
    subscriptions: int
    published: int
    """Messages this node accepted from its clients and its HTTP API."""
    delivered: int
    """Channel messages handed to connections (one per subscriber)."""
    channels: list[ChannelStatistics]
    apps: list[AppStats] = []
    """Each Pusher app's (with the API key, or an open API), when there are any."""


class ReloadReply(Frame, tag="reply", frozen=True, kw_only=True):
    """The body of ``POST /api/reload``: what a configuration reload did."""

    ended: int
    """Subscriptions the new rules no longer allow, ended with an ``unsubscribed`` notice."""
    restart_needed: list[str]
    """Changed settings that only a restart applies (their running values are kept)."""


class Error(Frame, tag="error", frozen=True, kw_only=True):
    """A request failed; ``code`` is stable, ``message`` is for people."""

    id: RequestId = None
    code: int
    message: str


class Message(Frame, tag="message", frozen=True, kw_only=True):
    """A message published on a channel the client subscribed to."""

    channel: str
    offset: int
    data: msgspec.Raw


class Gap(Frame, tag="gap", frozen=True, kw_only=True):
    """Messages ``first`` to ``last`` of ``channel`` were dropped by its slow-consumer policy."""

    channel: str
    first: int
    last: int


class Join(Frame, tag="join", frozen=True, kw_only=True):
    """A client subscribed to ``channel`` (on any node); its rule has ``join_leave``."""

    channel: str
    info: ClientInfo


class Leave(Frame, tag="leave", frozen=True, kw_only=True):
    """A client left ``channel`` (unsubscribed or disconnected)."""

    channel: str
    info: ClientInfo


class Restart(Frame, tag="restart", frozen=True, kw_only=True):
    """``channel``'s stream started again in ``epoch``: offsets begin again at 1.

    Sent when the broker lost the stream (Redis restarted without persistence). What
    was published on the old stream after the client's last offset may be lost.
    """

    channel: str
    epoch: str


class Unsubscribed(Frame, tag="unsubscribed", frozen=True, kw_only=True):
    """The server ended the subscription to ``channel``: a configuration reload no longer
    allows it. ``code`` and ``message`` are what a subscribe would now be refused with."""

    channel: str
    code: int
    message: str


class ServerPing(Frame, tag="ping", frozen=True, kw_only=True):
    """Sent to a client that has been quiet for ``server.ping_interval_seconds``; it must
    answer (a ``pong``, or any request) within ``server.pong_timeout_seconds``."""


_encoder = msgspec.json.Encoder()


def encode(frame: Frame) -> bytes:
    """Encode a server frame as JSON (UTF-8)."""
    return _encoder.encode(frame)


def encode_message(publication: Publication) -> bytes:
    """Encode a publication as a ``message`` frame (once, for all its subscribers)."""
    return _encoder.encode(
        Message(channel=publication.channel, offset=publication.offset, data=publication.data)
    )


def encode_gap(channel: str, first: int, last: int) -> bytes:
    """Encode a ``gap`` notice."""
    return encode(Gap(channel=channel, first=first, last=last))


def encode_event(channel: str, event: Literal["join", "leave"], client: ClientInfo) -> bytes:
    """Encode a ``join`` or ``leave`` event."""
    frame = Join if event == "join" else Leave
    return encode(frame(channel=channel, info=client))


class WireEncoding:
    """The engine's `channels.encoding.Encoding` for Clarion's protocol."""

    batches = True

    message = staticmethod(encode_message)
    event = staticmethod(encode_event)
    gap = staticmethod(encode_gap)

    @staticmethod
    def ended(channel: str, error: ChannelsError) -> bytes:
        """Encode an ``unsubscribed`` notice."""
        return encode(Unsubscribed(channel=channel, code=error.code, message=str(error)))

    @staticmethod
    def restart(channel: str, epoch: str) -> bytes:
        """Encode a ``restart`` notice."""
        return encode(Restart(channel=channel, epoch=epoch))


def encode_error(code: int, message: str, request_id: RequestId = None) -> bytes:
    """Encode an ``error`` frame."""
    return encode(Error(id=request_id, code=code, message=message))
