"""The Pusher wire's frames, as the engine's encoding renders them (sans I/O)."""

from __future__ import annotations

import json

import msgspec
import pytest

from channels.errors import UnsubscribedByServer
from channels.publication import ClientInfo, Publication
from service.apps import App
from service.errors import BadMessage
from service.pusher.protocol import (
    ENCODING,
    Envelope,
    SubscribeData,
    decode_data,
    encode_envelope,
    nesting,
)
from service.pusher.session import PusherSession
from service.settings import AppSettings, ServerSettings


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


class Recorded:
    """A connection that records how each frame was queued: waiting for room (``send``)
    or at once beyond the outbox's bound (``send_now``)."""

    def __init__(self) -> None:
        self.waited: list[bytes] = []
        self.at_once: list[bytes] = []
        self.client = ClientInfo("1.2", None)

    async def send(self, data: bytes) -> None:
        self.waited.append(data)

    def send_now(self, data: bytes) -> None:
        self.at_once.append(data)

    def flush(self) -> None:
        pass


async def test_replies_to_a_clients_requests_wait_for_room_in_its_outbox() -> None:
    """Only what must precede a channel's messages may go beyond the outbox's bound: a
    client that sends pings or bad events and never reads cannot grow its outbox."""
    connection = Recorded()
    app = App(AppSettings(id="1", key="k", secret="s" * 16), hub=None)  # type: ignore[arg-type] # no hub needed
    session = PusherSession(connection, app, ServerSettings())  # type: ignore[arg-type] # the parts a session uses
    for frame in ('{"event":"pusher:ping","data":{}}', "not json", '{"event":"pusher:nope"}'):
        await session.handle(frame)
    assert connection.at_once == []
    assert [json.loads(item)["event"] for item in connection.waited] == [
        "pusher:pong",
        "pusher:error",
        "pusher:error",
    ]
