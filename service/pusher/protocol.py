"""The Pusher Channels protocol, version 7, as msgspec Structs: what clients send, what
they are sent, and the engine's `channels.encoding.Encoding` for it.

Every frame is one JSON object ``{"event", "channel"?, "data"?}``. The server sends
``data`` as a JSON string, as Pusher does, except for ``pusher:error`` (an object); a
client's ``client-*`` event is relayed with its data as the client sent it.

A message on a channel is stored by the engine as its data. Published through this door
(the HTTP API or a client event), it is an *envelope*, ``{"event", "data", "user_id"?}``,
which a Pusher client receives as that event. Anything else (a message published through
Clarion's protocol) reaches Pusher clients as the event ``message``, its data as a JSON
string. Clarion's clients see envelopes as they are.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Final, TypeVar

import msgspec

from service.errors import BadJSON, BadMessage
from service.protocol import TOO_DEEP
from service.pusher.names import is_presence

if TYPE_CHECKING:
    from channels.brokers import Event as Announced
    from channels.errors import ChannelsError
    from channels.publication import ClientInfo, Publication

__all__ = (
    "ChannelData",
    "ENCODING",
    "Envelope",
    "Event",
    "Incoming",
    "MESSAGE_EVENT",
    "NULL",
    "PusherEncoding",
    "RESERVED_PREFIXES",
    "SigninData",
    "SubscribeData",
    "UnsubscribeData",
    "UserData",
    "as_string",
    "decode_data",
    "decode_envelope",
    "decode_incoming",
    "encode_envelope",
    "encode_error",
    "encode_event",
    "nesting",
    "sender_of",
)

#: The event name a message published through Clarion's protocol has for Pusher clients.
MESSAGE_EVENT: Final = "message"
#: How deeply a client event's data may nest arrays and objects (deeper is refused
#: with code 100): well within what every node can decode again, whatever its stack.
DATA_MAX_DEPTH: Final = 64
#: Events only the server sends: no message is ever relayed as one of them.
RESERVED_PREFIXES: Final = ("pusher:", "pusher_internal:")


#: JSON's null: an event's data when it has none.
NULL: Final = msgspec.Raw(b"null")


class Incoming(msgspec.Struct, frozen=True):
    """A frame from a client: ``pusher:subscribe``, ``pusher:ping``, ``client-*``..."""

    event: str
    data: msgspec.Raw = NULL
    channel: str | None = None


class SubscribeData(msgspec.Struct, frozen=True):
    """The data of ``pusher:subscribe``."""

    channel: str
    auth: str | None = None
    channel_data: str | None = None


class SigninData(msgspec.Struct, frozen=True):
    """The data of ``pusher:signin``."""

    auth: str
    user_data: str


class UnsubscribeData(msgspec.Struct, frozen=True):
    """The data of ``pusher:unsubscribe``."""

    channel: str


class ChannelData(msgspec.Struct, frozen=True):
    """A presence channel's ``channel_data``: who the client is there."""

    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | int
    user_info: msgspec.Raw = NULL


class UserData(msgspec.Struct, frozen=True):
    """A sign-in's ``user_data``: the user's ``id``, and whatever else the app says."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    """A message published through the Pusher door, as the engine stores it.

    ``socket_id`` is the connection that must not receive it: the client that sent a
    client event, or the one a backend named when it published.
    """

    event: str
    data: msgspec.Raw
    user_id: str | None = None
    socket_id: str | None = None


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    """A frame to a client."""

    event: str
    channel: str | None = None
    data: msgspec.Raw | None = None
    user_id: str | None = None


_incoming = msgspec.json.Decoder(Incoming)
_envelope = msgspec.json.Decoder(Envelope)
_encoder = msgspec.json.Encoder()


def decode_incoming(frame: str | bytes) -> Incoming:
    """Decode a client's frame.

    Raises:
        BadJSON: if it is not JSON (or nested too deeply).
        BadMessage: if it is not an object with a string ``event``.
    """
    try:
        return _incoming.decode(frame)
    except RecursionError:
        raise BadJSON(TOO_DEEP) from None
    except msgspec.ValidationError as exc:
        raise BadMessage(f"not a Pusher event: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadJSON(f"not valid JSON: {exc}") from None


_T = TypeVar("_T")


def decode_data(data: msgspec.Raw | str, kind: type[_T], what: str = "data") -> _T:
    """Decode an event's *data* (*what* it is, for the error) as *kind*; data sent as a
    JSON string is decoded from it.

    Raises:
        BadMessage: if it does not fit (or is not JSON, or nested too deeply).
    """
    try:
        if isinstance(data, msgspec.Raw) and memoryview(data)[:1].tobytes() == b'"':
            data = msgspec.json.decode(data, type=str)
        return msgspec.json.decode(data, type=kind)
    except RecursionError:
        raise BadMessage(f"{what}: {TOO_DEEP}") from None
    except msgspec.DecodeError as exc:  # ValidationError too
        raise BadMessage(f"{what}: {exc}") from None


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting(data: bytes) -> int:
    """How deeply *data* (JSON) nests arrays and objects."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def as_string(value: object) -> msgspec.Raw:
    """*value* encoded as JSON, then as a JSON string (Pusher's ``data``)."""
    return msgspec.Raw(_encoder.encode(_encoder.encode(value).decode()))


def encode_event(
    event: str, data: object = None, *, channel: str | None = None, user_id: str | None = None
) -> bytes:
    """Encode a frame; *data* (any JSON value) goes as a JSON string, as Pusher sends it."""
    raw = None if data is None else as_string(data)
    return _encoder.encode(Event(event, channel, raw, user_id))


def encode_error(code: int | None, message: str) -> bytes:
    """Encode ``pusher:error``: its data is an object, ``{"code", "message"}``."""
    data = msgspec.Raw(_encoder.encode({"code": code, "message": message}))
    return _encoder.encode(Event("pusher:error", data=data))


def decode_envelope(data: msgspec.Raw) -> Envelope | None:
    """The envelope *data* is, if it is one."""
    if memoryview(data)[:1].tobytes() != b"{":
        return None
    try:
        return _envelope.decode(data)
    except (msgspec.DecodeError, RecursionError):  # not an envelope, or too deep to read
        return None


def encode_envelope(envelope: Envelope) -> msgspec.Raw:
    """Encode a message of this door as the engine stores it."""
    return msgspec.Raw(_encoder.encode(envelope))


def sender_of(data: msgspec.Raw) -> str | None:
    """The connection a message must not reach (see `Envelope`): the engine's hook."""
    if b'"socket_id"' not in bytes(data):  # most messages: no decoding
        return None
    envelope = decode_envelope(data)
    return None if envelope is None else envelope.socket_id


class PusherEncoding:
    """The engine's `channels.encoding.Encoding` for the Pusher protocol: one message per
    frame; join and leave are a presence channel's ``member_added`` and
    ``member_removed``; the engine's notices (a gap, a restart, a subscription the
    server ended) are ``clarion:*`` events on their channel, which Pusher clients hand to
    whoever binds them."""

    batches = False

    @staticmethod
    def message(publication: Publication) -> bytes:
        channel, data = publication.channel, publication.data
        envelope = decode_envelope(data)
        if envelope is None or envelope.event.startswith(RESERVED_PREFIXES):
            # Not this door's, or an event only the server sends: never relayed as one.
            text = msgspec.Raw(_encoder.encode(bytes(data).decode()))
            return _encoder.encode(Event(MESSAGE_EVENT, channel, text))
        # A member's user_id is a presence channel's (whose publishers are authorized).
        user_id = envelope.user_id if is_presence(channel) else None
        return _encoder.encode(Event(envelope.event, channel, envelope.data, user_id))

    @staticmethod
    def event(channel: str, event: Announced, client: ClientInfo) -> bytes:
        user_id = client.user if client.user is not None else client.client
        if not is_presence(channel):  # a Clarion rule's join_leave: no member of Pusher's
            return encode_event(f"clarion:{event}", {"user_id": user_id}, channel=channel)
        if event == "join":
            info = None if client.info is None else msgspec.Raw(client.info.encode())
            member = {"user_id": user_id, "user_info": info}
            return encode_event("pusher_internal:member_added", member, channel=channel)
        return encode_event("pusher_internal:member_removed", {"user_id": user_id}, channel=channel)

    @staticmethod
    def ended(channel: str, error: ChannelsError) -> bytes:
        data = {"code": error.code, "message": str(error)}
        return encode_event("clarion:unsubscribed", data, channel=channel)

    @staticmethod
    def gap(channel: str, first: int, last: int) -> bytes:
        return encode_event("clarion:gap", {"first": first, "last": last}, channel=channel)

    @staticmethod
    def restart(channel: str, epoch: str) -> bytes:
        return encode_event("clarion:restart", {"epoch": epoch}, channel=channel)


ENCODING: Final = PusherEncoding()
"""The one instance every Pusher connection shares: a message is encoded once for all."""
