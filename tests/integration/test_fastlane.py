"""The HTTP API's fast lane (`service.fastlane`) against a real hypercorn: it answers a
backend's whole POSTs as hypercorn's way does, and leaves everything else to hypercorn."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from channels.config import ChannelRule, History
from service.app import Clarion
from service.errors import Unauthorized
from service.settings import ServerSettings, Settings
from tests.integration.test_hostile_http import read_response, wait_closed
from tests.support.server import running_server

if TYPE_CHECKING:
    from service.runner import Backend

#: Channels that keep what is published, so that offsets count and history reads it.
KEEPING = Settings(channels=[ChannelRule(match="*", history=History(size=10))])


def publish(channel: str, data: str, extra: bytes = b"") -> bytes:
    body = msgspec.json.encode({"channel": channel, "data": data})
    return b"POST /api/publish HTTP/1.1\r\nhost: 127.0.0.1\r\n%scontent-length: %d\r\n\r\n%s" % (
        extra,
        len(body),
        body,
    )


@pytest.fixture
def lane_answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the lane answered (`Clarion.answer` is its only way in)."""
    answered: list[str] = []
    answer = Clarion.answer

    async def counting(self: Clarion, scope: dict[str, object], body: bytes) -> object:
        answered.append(str(scope["path"]))
        return await answer(self, scope, body)

    monkeypatch.setattr(Clarion, "answer", counting)
    return answered


async def test_pipelined_publishes_are_answered_by_the_lane_in_order(
    anyio_backend: Backend, free_tcp_port: int, lane_answers: list[str]
) -> None:
    with anyio.fail_after(20):
        async with running_server(KEEPING, anyio_backend, free_tcp_port):
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                await stream.send(b"".join(publish("news", str(n)) for n in range(5)))
                buffer = bytearray()
                offsets = []
                for _ in range(5):
                    response = await read_response(stream, buffer)
                    assert response.status == 200
                    assert response.headers["content-type"] == "application/json"
                    assert "date" in response.headers
                    offsets.append(msgspec.json.decode(response.body)["offset"])
    assert offsets == [1, 2, 3, 4, 5]
    assert lane_answers == ["/api/publish"] * 5


async def test_what_the_lane_does_not_take_goes_to_hypercorn_and_the_lane_resumes(
    anyio_backend: Backend, free_tcp_port: int, lane_answers: list[str]
) -> None:
    with anyio.fail_after(20):
        async with running_server(KEEPING, anyio_backend, free_tcp_port):
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                buffer = bytearray()
                await stream.send(publish("news", "one"))
                assert (await read_response(stream, buffer)).status == 200
                # A GET, on the same connection: hypercorn's.
                await stream.send(b"GET /api/history?channel=news HTTP/1.1\r\nhost: x\r\n\r\n")
                history = await read_response(stream, buffer)
                assert history.status == 200
                assert [m["data"] for m in msgspec.json.decode(history.body)["messages"]] == ["one"]
                # A request that arrives in two parts: hypercorn's too.
                request = publish("news", "two")
                await stream.send(request[:30])
                await anyio.sleep(0.05)
                await stream.send(request[30:])
                assert (await read_response(stream, buffer)).status == 200
                # And a next whole one is the lane's again, once hypercorn is done with
                # its request (it may still be when the answer has arrived).
                for _ in range(20):
                    await stream.send(publish("news", "more"))
                    assert (await read_response(stream, buffer)).status == 200
                    if len(lane_answers) == 2:
                        break
    assert lane_answers == ["/api/publish", "/api/publish"]


@pytest.mark.parametrize(
    "extra",
    [
        b"transfer-encoding: chunked\r\n",  # with a content-length too
        b"content-length: 3\r\n",  # a second one, which disagrees
        b"bad header: 1\r\n",  # a name that is not a token
        b"host: elsewhere\r\n",  # a second host
    ],
    ids=["te-and-cl", "two-lengths", "bad-name", "two-hosts"],
)
async def test_a_request_smuggling_attempt_is_hypercorns_to_refuse_and_publishes_nothing(
    anyio_backend: Backend, free_tcp_port: int, lane_answers: list[str], extra: bytes
) -> None:
    with anyio.fail_after(20):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                # What could follow a request whose length is read one way or another.
                await stream.send(publish("news", "smuggled", extra) + publish("news", "after"))
                response = await read_response(stream, bytearray())
                assert response.status == 400
                await wait_closed(stream)
            hub = server.app.hub if server.app is not None else None
            assert hub is not None
            assert hub.statistics().accepted == 0
    assert lane_answers == []


async def test_the_lane_refuses_as_the_api_does(
    anyio_backend: Backend, free_tcp_port: int, lane_answers: list[str]
) -> None:
    config = Settings(server=ServerSettings(api_keys=["right"]))
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port):
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                buffer = bytearray()
                await stream.send(publish("news", "x", b"authorization: Bearer wrong\r\n"))
                refused = await read_response(stream, buffer)
                assert (refused.status, refused.headers["www-authenticate"]) == (401, "bearer")
                assert msgspec.json.decode(refused.body)["code"] == Unauthorized.code
                await stream.send(
                    b"POST /api/nowhere HTTP/1.1\r\nhost: x\r\nauthorization: Bearer right\r\n"
                    b"content-length: 2\r\n\r\n{}"
                )
                missing = await read_response(stream, buffer)
                assert missing.status == 404
                await stream.send(publish("news", "x", b"authorization: Bearer right\r\n"))
                assert (await read_response(stream, buffer)).status == 200
    assert lane_answers == ["/api/publish", "/api/nowhere", "/api/publish"]


async def test_a_request_that_asks_to_close_is_answered_then_closed(
    anyio_backend: Backend, free_tcp_port: int, lane_answers: list[str]
) -> None:
    with anyio.fail_after(20):
        async with running_server(Settings(), anyio_backend, free_tcp_port):
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                await stream.send(publish("news", "x", b"connection: close\r\n"))
                response = await read_response(stream, bytearray())
                assert (response.status, response.headers["connection"]) == (200, "close")
                await wait_closed(stream)
    assert lane_answers == ["/api/publish"]


async def test_nothing_after_an_answer_that_closes_the_connection_is_run(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    # hypercorn reads 64 KiB at a time: the request that closes ends exactly there, and
    # the one after it comes in the next read (on asyncio, from the reader's buffer).
    fillers = [publish("news", f"{n:05}") for n in range(400)]
    closing = publish("news", "close", b"connection: close\r\n")
    room = 65_536 - len(b"".join(fillers[:-1])) - len(closing)
    fillers[-1] = next(
        request for size in range(room) if len(request := publish("news", "x" * size)) == room
    )
    assert len(b"".join(fillers) + closing) == 65_536
    after = publish("news", "after the close")
    with anyio.fail_after(20):
        async with running_server(KEEPING, anyio_backend, free_tcp_port) as server:
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                await stream.send(b"".join(fillers) + closing + after)
                buffer = bytearray()
                for _ in range(401):
                    response = await read_response(stream, buffer)
                    assert response.status == 200
                assert response.headers["connection"] == "close"
                await wait_closed(stream)
            hub = server.app.hub if server.app is not None else None
            assert hub is not None
            assert hub.statistics().accepted == 401


async def test_the_lane_and_hypercorn_count_requests_together(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    # hypercorn closes a keep-alive connection after 1,000 requests, whoever answered them.
    probe = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    with anyio.fail_after(60):
        async with running_server(Settings(), anyio_backend, free_tcp_port):
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                buffer = bytearray()
                for count in range(1, 1001):
                    await stream.send(publish("news", "x") if count % 2 else probe)
                    response = await read_response(stream, buffer)
                    assert response.status == 200
                    if count < 1000:
                        assert "connection" not in response.headers, count
                assert response.headers["connection"] == "close"
                await wait_closed(stream)


async def test_an_idle_lane_connection_is_closed_by_the_keep_alive_timer(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=ServerSettings(handshake_timeout_seconds=0.5))
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port):
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                await stream.send(publish("news", "x"))
                assert (await read_response(stream, bytearray())).status == 200
                started = anyio.current_time()
                await wait_closed(stream)
                assert anyio.current_time() - started < 2
