from __future__ import annotations

from typing import Any

import msgspec
import pytest

from channels.publication import Publication
from service.apibodies import HistoryRequest as HistoryQuery, PresenceRequest, PublishRequest
from service.datastructures import QueryParams
from service.errors import BadJSON, BadMessage, ProtocolError, UnknownOp
from service.protocol import (
    ClientMessage,
    History as HistoryRequest,
    HistoryEntry,
    HistoryReply,
    Ping,
    Publish,
    PublishReply,
    Since,
    Subscribe,
    SubscribeReply,
    Unsubscribe,
    decode_body,
    decode_query,
    decode_request,
    encode,
    encode_error,
    encode_gap,
    encode_message,
)

VALID = [
    ('{"type":"ping"}', Ping()),
    ('{"type":"ping","id":"abc"}', Ping(id="abc")),
    ('{"type":"subscribe","id":1,"channel":"c"}', Subscribe(id=1, channel="c")),
    (
        '{"type":"subscribe","id":1,"channel":"c","since":{"offset":4,"epoch":"e"}}',
        Subscribe(id=1, channel="c", since=Since(4, "e")),
    ),
    ('{"type":"unsubscribe","channel":"c"}', Unsubscribe(channel="c")),
    (
        '{"type":"history","channel":"c","limit":5,"since":2}',
        HistoryRequest(channel="c", limit=5, since=2),
    ),
]


@pytest.mark.parametrize(("frame", "expected"), VALID, ids=[frame for frame, _ in VALID])
def test_valid_requests_decode(frame: str, expected: ClientMessage) -> None:
    assert decode_request(frame) == expected
    assert decode_request(frame.encode()) == expected


def test_publish_keeps_data_as_raw_json() -> None:
    request = decode_request('{"type":"publish","id":2,"channel":"c","data":{"a": [1, "é"]}}')
    assert isinstance(request, Publish)
    assert bytes(request.data) == '{"a": [1, "é"]}'.encode()


INVALID: list[tuple[str | bytes, type[ProtocolError], Any, str]] = [
    ("nope", BadJSON, None, "not valid JSON"),
    (b"\xff\xfe", BadJSON, None, "not valid JSON"),
    ('{"type":"ping"', BadJSON, None, "truncated"),
    ('{"type":0', BadJSON, None, "truncated"),  # found by tests/service/test_fuzz.py
    # data is kept raw, unchecked by the decoder: a subscriber could not read it.
    (b'{"type":"publish","channel":"c","data":"\xc3("}', BadJSON, None, "invalid UTF-8 at byte 40"),
    (b'{"type":"publish","channel":"c","data":["\xed\xa0\x80"]}', BadJSON, None, "UTF-8"),
    ("[1,2]", BadMessage, None, "Expected `object`, got `array`"),
    ('{"id":1}', BadMessage, 1, "missing required field `type`"),
    ('{"type":"jump","id":2}', UnknownOp, 2, "unknown operation 'jump'"),
    ('{"type":7,"id":3}', UnknownOp, 3, "unknown operation 7"),
    ('{"type":["ping"],"id":3}', UnknownOp, 3, "unknown operation ['ping']"),
    ('{"type":"subscribe","id":4}', BadMessage, 4, "missing required field `channel`"),
    (
        '{"type":"subscribe","id":5,"channel":1}',
        BadMessage,
        5,
        "channel: Expected `str`, got `int`",
    ),
    (
        '{"type":"subscribe","id":6,"channel":"c","since":3}',
        BadMessage,
        6,
        "since: Expected `object | null`, got `int`",
    ),
    (
        '{"type":"subscribe","id":7,"channel":"c","since":{"offset":-1,"epoch":"e"}}',
        BadMessage,
        7,
        "since.offset: Expected `int` >= 0",
    ),
    ('{"type":"publish","id":8,"channel":"c"}', BadMessage, 8, "missing required field `data`"),
    (
        '{"type":"history","id":9,"channel":"c","limit":0}',
        BadMessage,
        9,
        "limit: Expected `int` >= 1",
    ),
    ('{"type":"ping","id":10,"extra":1}', BadMessage, 10, "unknown field `extra`"),
    ('{"type":"ping","id":[1]}', BadMessage, None, "id: Expected `int | str | null`"),
]


@pytest.mark.parametrize(
    ("frame", "error", "request_id", "message"), INVALID, ids=[message for *_, message in INVALID]
)
def test_invalid_requests_get_a_coded_error_with_their_id(
    frame: str | bytes, error: type[ProtocolError], request_id: Any, message: str
) -> None:
    with pytest.raises(error) as caught:
        decode_request(frame)
    assert caught.value.request_id == request_id
    assert message in str(caught.value)


def test_error_codes_are_stable() -> None:
    assert (BadJSON.code, BadMessage.code, UnknownOp.code) == (100, 101, 102)


def test_publish_request_body() -> None:
    decoder = msgspec.json.Decoder(PublishRequest)
    request = decode_body(decoder, b'{"channel":"c","data":[1]}')
    assert (request.channel, bytes(request.data)) == ("c", b"[1]")
    with pytest.raises(BadMessage, match="missing required field `data`"):
        decode_body(decoder, b'{"channel":"c"}')
    with pytest.raises(BadJSON):
        decode_body(decoder, b"{")
    with pytest.raises(BadJSON, match="invalid UTF-8 at byte 23"):
        decode_body(decoder, b'{"channel":"c","data":"\xff"}')


def test_a_query_is_read_as_its_request() -> None:
    query = QueryParams("channel=news&since=2&limit=5&_=cache-buster")
    assert decode_query(HistoryRequest, query) == HistoryRequest(channel="news", since=2, limit=5)
    flags = [
        decode_query(PresenceRequest, QueryParams(f"channel=c&count_only={v}"))
        for v in ("1", "true", "0")
    ]
    assert [flag.count_only for flag in flags] == [True, True, False]
    with pytest.raises(BadMessage, match="limit: Expected `int` >= 1"):
        decode_query(HistoryQuery, QueryParams("channel=c&limit=0"))
    with pytest.raises(BadMessage, match="missing required field `channel`"):
        decode_query(HistoryQuery, QueryParams("since=1"))
    with pytest.raises(BadMessage, match="count_only"):
        decode_query(PresenceRequest, QueryParams("channel=c&count_only=yes"))


def test_server_frames_encode_compactly_with_type_first() -> None:
    publication = Publication("c", 3, msgspec.Raw(b'{"x":1}'))
    assert (
        encode_message(publication) == b'{"type":"message","channel":"c","offset":3,"data":{"x":1}}'
    )
    assert encode_gap("c", 4, 9) == b'{"type":"gap","channel":"c","first":4,"last":9}'
    assert encode_error(201, "no", 5) == b'{"type":"error","id":5,"code":201,"message":"no"}'
    assert encode_error(100, "bad") == b'{"type":"error","code":100,"message":"bad"}'
    assert encode(SubscribeReply(id=1, channel="c", offset=0, epoch="e")) == (
        b'{"type":"reply","id":1,"channel":"c","offset":0,"epoch":"e"}'
    )
    assert encode(SubscribeReply(id=1, channel="c", offset=2, epoch="e", recovered=False)) == (
        b'{"type":"reply","id":1,"channel":"c","offset":2,"epoch":"e","recovered":false}'
    )
    assert encode(PublishReply(channel="c", offset=1, epoch="e")) == (
        b'{"type":"reply","channel":"c","offset":1,"epoch":"e"}'
    )
    history = HistoryReply(
        id="h", channel="c", offset=2, epoch="e", messages=[HistoryEntry(2, msgspec.Raw(b"null"))]
    )
    assert encode(history) == (
        b'{"type":"reply","id":"h","channel":"c","offset":2,"epoch":"e",'
        b'"messages":[{"offset":2,"data":null}]}'
    )
