"""What the HTTP API's fast lane takes: strictly less than h11 does (`service.fastlane`)."""

from __future__ import annotations

import pytest

from service.fastlane import parse_head

HEAD = b"POST /api/publish HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 12"


def test_a_backends_request_is_taken_with_its_headers_lowercased() -> None:
    head = parse_head(HEAD + b"\r\nAuthorization:  Bearer k \r\nConnection: keep-alive, Close", 100)
    assert head is not None
    assert (head.target, head.length, head.close) == (b"/api/publish", 12, True)
    assert head.headers[2] == (b"authorization", b"Bearer k")


def test_a_pusher_request_keeps_its_query() -> None:
    target = b"/apps/1/events?auth_key=k&auth_signature=s"
    head = parse_head(HEAD.replace(b"/api/publish", target), 100)
    assert head is not None
    assert head.target == target


@pytest.mark.parametrize(
    "head",
    [
        HEAD.replace(b"POST", b"GET"),
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"),
        HEAD.replace(b"/api/publish", b"/ws"),
        HEAD.replace(b"/api/publish", b"http://x/api/publish"),
        HEAD.replace(b"POST ", b"POST  "),
        HEAD + b"\r\ntransfer-encoding: chunked",
        HEAD + b"\r\nTransfer-Encoding: identity",
        HEAD + b"\r\nexpect: 100-continue",
        HEAD + b"\r\nupgrade: websocket",
        HEAD + b"\r\ncontent-length: 12",
        HEAD.replace(b"12", b"+12"),
        HEAD.replace(b"12", b"1 2"),
        HEAD.replace(b"12", b"101"),  # over the body limit
        HEAD + b"\r\nhost: other",
        HEAD.replace(b"host: 127.0.0.1\r\n", b""),
        HEAD.replace(b"content-length: 12", b"x: 1"),
        HEAD + b"\r\n folded",
        HEAD + b"\r\nbad name: 1",
        HEAD + b"\r\nname : 1",
        HEAD + b"\r\nx: a\x00b",
        HEAD + b"\r\nx: a\nb",
        HEAD + b"\r\nno-colon",
    ],
)
def test_anything_unusual_is_left_to_hypercorn(head: bytes) -> None:
    assert parse_head(head, 100) is None
