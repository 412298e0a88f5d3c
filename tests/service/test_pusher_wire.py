"""The Pusher wire's frames, as the engine's encoding renders them (sans I/O)."""

from __future__ import annotations

import json

import msgspec
import pytest

from channels.errors import UnsubscribedByServer
from channels.publication import ClientInfo, Publication
from service.errors import BadMessage
from service.pusher.protocol import (
    ENCODING,
    Envelope,
    SubscribeData,
    decode_data,
    encode_envelope,
    nesting,
)


def frame(data: bytes) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(data)
    return decoded


@pytest.mark.parametrize(
    ("channel", "data", "expected"),
    [
        (
            "news",
            encode_envelope(Envelope("scored", msgspec.Raw(b'"{}"'), "ann", "1.2")),
            {"event": "scored", "channel": "news", "data": "{}"},
        ),
        (
            "presence-r",
            encode_envelope(Envelope("client-x", msgspec.Raw(b"{}"), "ann", "1.2")),
            {"event": "client-x", "channel": "presence-r", "data": {}, "user_id": "ann"},
        ),
        (
            "news",
            msgspec.Raw(b'{"n":1}'),
            {"event": "message", "channel": "news", "data": '{"n":1}'},
        ),
        (
            "news",
            encode_envelope(Envelope("pusher_internal:member_added", msgspec.Raw(b'"{}"'))),
            {
                "event": "message",
                "channel": "news",
                "data": '{"event":"pusher_internal:member_added","data":"{}"}',
            },
        ),
    ],
    ids=["envelope", "presence-user-id", "clarion-message", "reserved-event"],
)
def test_a_message_is_an_event_of_its_envelope_or_a_message(
    channel: str, data: msgspec.Raw, expected: dict[str, object]
) -> None:
    assert frame(ENCODING.message(Publication(channel, 1, data))) == expected


def test_joins_are_members_on_presence_channels_and_notices_elsewhere() -> None:
    ann = ClientInfo("1.2", "ann", '{"name":"Ann"}')
    added = frame(ENCODING.event("presence-r", "join", ann))
    assert added["event"] == "pusher_internal:member_added"
    assert json.loads(str(added["data"])) == {"user_id": "ann", "user_info": {"name": "Ann"}}
    other = frame(ENCODING.event("news", "leave", ClientInfo("c1", None)))
    assert (other["event"], json.loads(str(other["data"]))) == ("clarion:leave", {"user_id": "c1"})
    ended = frame(ENCODING.ended("news", UnsubscribedByServer("news")))
    assert ended["event"] == "clarion:unsubscribed"
    assert json.loads(str(ended["data"]))["code"] == 210
    assert json.loads(str(frame(ENCODING.gap("news", 3, 5))["data"])) == {"first": 3, "last": 5}


def test_data_sent_as_an_object_or_as_a_string_decodes_alike() -> None:
    as_object = decode_data(msgspec.Raw(b'{"channel":"a"}'), SubscribeData)
    as_string = decode_data(msgspec.Raw(b'"{\\"channel\\":\\"a\\"}"'), SubscribeData)
    assert as_object == as_string == SubscribeData("a")
    with pytest.raises(BadMessage, match="data"):
        decode_data(msgspec.Raw(b"[1]"), SubscribeData)


@pytest.mark.parametrize(
    ("data", "depth"),
    [(b"1", 0), (b"[]", 1), (b'{"a":[{"b":[]}]}', 4), (b'"[[[["', 0), (b'["\\"[", [1]]', 2)],
)
def test_nesting_counts_arrays_and_objects_outside_strings(data: bytes, depth: int) -> None:
    assert nesting(data) == depth
