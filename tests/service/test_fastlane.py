"""What the HTTP API's fast lane takes: strictly less than h11 does (`service.fastlane`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.typing import ConnectionState

from service.fastlane import FastLane, parse_head

if TYPE_CHECKING:
    from collections.abc import MutableMapping

HEAD = b"POST /api/publish HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 12"


def test_a_backends_request_is_taken_with_its_headers_lowercased() -> None:
    head = parse_head(HEAD + b"\r\nAuthorization:  Bearer k \r\nConnection: keep-alive, Close", 100)
    assert head is not None
    assert (head.target, head.length, head.close) == (b"/api/publish", 12, True)
    assert head.headers[2] == (b"authorization", b"Bearer k")


def test_close_in_any_connection_header_closes() -> None:
    head = parse_head(HEAD + b"\r\nconnection: close\r\nconnection: keep-alive", 100)
    assert head is not None
    assert head.close


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


class _Context:
    """What the lane and hypercorn's HTTP/1.1 protocol ask of a worker's context."""

    def __init__(self) -> None:
        self.terminated = anyio.Event()

    @staticmethod
    def event_class() -> _Event:
        return _Event()


class _Event:
    def __init__(self) -> None:
        self._event = anyio.Event()

    async def clear(self) -> None:
        self._event = anyio.Event()

    async def wait(self) -> None:
        await self._event.wait()

    async def set(self) -> None:
        self._event.set()


async def test_bytes_after_an_answer_that_closes_the_connection_are_not_read() -> None:
    # hypercorn's asyncio worker goes on reading what its stream reader holds after the
    # connection was closed: nothing of it may reach hypercorn's protocol (which would
    # run it as a request, unanswered) or the app.
    answered: list[bytes] = []
    sent: list[Event] = []

    async def lane(
        scope: MutableMapping[str, Any], body: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        answered.append(body)
        return 200, b"{}", []

    async def send(event: Event) -> None:
        if not isinstance(event, Updated):  # the idle timer restarted
            sent.append(event)

    class Lane(FastLane):
        lane_of = staticmethod(lambda app: (lane, 1000))

    wrapper = Lane(None, Config(), _Context(), None, ConnectionState({}), False, None, None, send)
    request = b"POST /api/publish HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
    closing = request.replace(b"host: x", b"host: x\r\nconnection: close")
    await wrapper.handle(RawData(closing))
    assert (answered, [type(event) for event in sent]) == ([b"{}"], [RawData, Closed])
    answer = sent[0]
    assert isinstance(answer, RawData)
    assert answer.data.endswith(b"connection: close\r\n\r\n{}")
    await wrapper.handle(RawData(request))  # hypercorn's protocol would run it
    assert len(answered) == 1
    assert len(sent) == 2
