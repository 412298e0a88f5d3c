"""Hostile HTTP against a real hypercorn: a defined answer, never a 500, a traceback, a
held slot, or a keep-alive connection that drops the next request."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol

from channels.config import BrokerConfig, ChannelRule, History
from service.settings import ServerSettings, Settings
from tests.integration.test_limits import refusal
from tests.support.server import http_call, running_server
from tests.support.wsclient import connect

if TYPE_CHECKING:
    from anyio.abc import ByteStream

    from service.runner import Backend

PUBLISH_HEAD = (
    b"POST /api/publish HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
)


class Response:
    """One HTTP/1.1 response read off a keep-alive connection."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def read_response(stream: ByteStream, buffer: bytearray) -> Response:
    """Read one response (with a content-length) from *stream*; *buffer* keeps what follows."""
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive()
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers["content-length"])
    while len(rest) < length:
        rest += await stream.receive()
    buffer[:] = rest[length:]
    return Response(int(lines[0].split(" ", 2)[1]), headers, rest[:length])


async def wait_closed(stream: ByteStream) -> None:
    """Wait until the server ends the connection."""
    try:
        while True:
            await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_body_that_never_ends_gets_408_and_holds_a_slot_only_until_then(
    anyio_backend: Backend, free_tcp_port: int, framing: str
) -> None:
    config = Settings(server=ServerSettings(handshake_timeout_seconds=0.5, max_connections=3))
    if framing == "chunked":
        head = PUBLISH_HEAD + b'transfer-encoding: chunked\r\n\r\n64\r\n{"cha'
    else:
        head = PUBLISH_HEAD + b'content-length: 100\r\n\r\n{"cha'
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            slow = [await anyio.connect_tcp("127.0.0.1", free_tcp_port) for _ in range(3)]
            try:
                for stream in slow:
                    await stream.send(head)  # and one byte at a time, too late, never more
                # Three bodies on their way fill the node's three slots: no WebSocket gets in.
                await server_holds(server.app, 3)
                assert await refusal(server.ws_url) == (503, 112)
                for stream in slow:
                    await stream.send(b"n")
                    response = await read_response(stream, bytearray())
                    assert response.status == 408
                    assert msgspec.json.decode(response.body)["code"] == 115
                    assert response.headers["connection"] == "close"
                    await wait_closed(stream)
            finally:
                for stream in slow:
                    await stream.aclose()
            async with connect(server.ws_url) as client:  # the slots are free again
                assert await client.request({"type": "ping", "id": 1}) == {"type": "reply", "id": 1}


async def server_holds(app: object, count: int) -> None:
    """Wait until the in-process app holds *count* connection slots."""
    slots = app._slots  # type: ignore[attr-defined]  # the test's view into the app
    while slots.held < count:  # noqa: ASYNC110 - the requests arrive over TCP
        await anyio.sleep(0.01)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/publish", 401), ("/nowhere", 404), ("/api/publish", 200)],
    ids=["wrong-key", "no-route", "accepted"],
)
async def test_a_keep_alive_connection_answers_every_request_after_an_early_refusal(
    anyio_backend: Backend, free_tcp_port: int, path: str, status: int
) -> None:
    keys = ["right"] if status == 401 else []
    config = Settings(server=ServerSettings(api_keys=keys))
    body = b'{"channel":"c","data":"' + b"x" * 2000 + b'"}'
    head = (
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer wrong\r\n"
        b"content-length: %d\r\n\r\n" % (path.encode(), len(body))
    )
    with anyio.fail_after(60):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                buffer = bytearray()
                for _ in range(300):
                    # The head alone first: a server that answers now, before the body,
                    # leaves the body on the connection and drops it after its answer.
                    await stream.send(head)
                    await stream.send(body)
                    response = await read_response(stream, buffer)
                    assert response.status == status
                    assert "connection" not in response.headers
                # Half a body: no answer comes until the rest does (an early answer would
                # leave the rest to be read as the next request, or the connection dropped).
                await stream.send(head + body[:1000])
                with anyio.move_on_after(0.3):
                    early = await stream.receive()
                    pytest.fail(f"answered before the body arrived: {early!r}")
                await stream.send(body[1000:])
                assert (await read_response(stream, buffer)).status == status
                # Pipelined: three requests in one write, three answers in order.
                await stream.send((head + body) * 3)
                for _ in range(3):
                    assert (await read_response(stream, buffer)).status == status
            assert (await http_call(server, "GET", "/health"))[0] == 200


DEEP = b"[" * 5000 + b"]" * 5000


async def test_deeply_nested_json_gets_a_coded_error_and_no_traceback(
    anyio_backend: Backend, free_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(20), caplog.at_level(logging.DEBUG):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as client:
                for _ in range(3):
                    await client.send_bytes(
                        b'{"type":"publish","id":1,"channel":"c","data":' + DEEP + b"}"
                    )
                    error = await client.receive_object()
                    assert (error["type"], error["code"]) == ("error", 100)
                assert await client.request({"type": "ping", "id": 2}) == {"type": "reply", "id": 2}
            body = b'{"channel":"c","data":' + DEEP + b"}"
            status, reply = await http_call(server, "POST", "/api/publish", body)
            assert (status, reply["type"], reply["code"]) == (400, "error", 100)
    assert not [record for record in caplog.records if record.exc_info]
    assert "RecursionError" not in caplog.text


async def test_data_that_is_not_utf8_is_refused_before_anyone_sees_it(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    # A text frame must be UTF-8: bytes that a binary frame or an HTTP body slipped into
    # data would close every subscriber (1007) and be replayed by history.
    rules = [ChannelRule(match="*", history=History(size=10))]
    config = Settings(broker=broker_config, channels=rules)
    poison = b'{"type":"publish","id":1,"channel":"c","data":"\xc3("}'
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as subscriber, connect(server.ws_url) as publisher:
                assert (await subscriber.request({"type": "subscribe", "id": 1, "channel": "c"}))[
                    "type"
                ] == "reply"
                await publisher.send_bytes(poison)
                error = await publisher.receive_object()
                assert (error["type"], error["code"]) == ("error", 100)
                assert "UTF-8" in error["message"]
                status, reply = await http_call(
                    server, "POST", "/api/publish", b'{"channel":"c","data":["\xff"]}'
                )
                assert (status, reply["code"]) == (400, 100)
                published = {"type": "publish", "id": 2, "channel": "c", "data": "ok é"}
                assert (await publisher.request(published))["offset"] == 1
                message = await subscriber.receive_object()
                assert (message["offset"], message["data"]) == (1, "ok é")
                page = await subscriber.request({"type": "history", "id": 3, "channel": "c"})
                assert [item["data"] for item in page["messages"]] == ["ok é"]


@pytest.mark.parametrize("limit", [10**17, 2**64, 10**30])
async def test_a_huge_history_limit_reads_what_is_kept(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig, limit: int
) -> None:
    # Redis's Lua reads a number this size as a float, which XRANGE's COUNT refuses.
    config = Settings(
        broker=broker_config, channels=[ChannelRule(match="*", history=History(size=3))]
    )
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as client:
                for n in range(5):
                    message = {"type": "publish", "id": n, "channel": "c", "data": n}
                    assert (await client.request(message))["type"] == "reply"
                for since in (None, 0):
                    request = {"type": "history", "id": 9, "channel": "c", "limit": limit}
                    if since is not None:
                        request["since"] = since
                    page = await client.request(request)
                    assert [item["data"] for item in page["messages"]] == [2, 3, 4], page


async def test_a_client_that_sends_on_after_a_413_leaves_no_traceback(
    anyio_backend: Backend, free_tcp_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # The client writes on while the server answers 413 and closes: hypercorn's trio
    # worker would log a BusyResourceError traceback for many such requests.
    config = Settings(server=ServerSettings(max_request_bytes=1000))
    head = PUBLISH_HEAD + b"content-length: 100000\r\n\r\n"

    def send_on() -> None:  # from a thread: a client that does not wait for the server
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", free_tcp_port)) as client:
                try:
                    client.sendall(head + b"x" * 5000)
                    for _ in range(20):
                        client.sendall(b"y" * 5000)
                except OSError:
                    pass  # the server closed: as expected, sooner or later

    with anyio.fail_after(30), caplog.at_level(logging.DEBUG):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            await anyio.to_thread.run_sync(send_on)
            assert (await http_call(server, "GET", "/health"))[0] == 200
    assert not [record for record in caplog.records if record.exc_info]


async def test_an_error_in_hypercorn_ends_only_its_connection(
    anyio_backend: Backend,
    free_tcp_port: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # hypercorn's trio worker (0.18) let such an error end the whole server.
    handle = H11Protocol.handle

    async def failing(self: H11Protocol, event: object) -> None:
        if isinstance(event, RawData) and b"boom" in event.data:
            raise RuntimeError("a hypercorn bug")
        await handle(self, event)  # type: ignore[arg-type]

    monkeypatch.setattr(H11Protocol, "handle", failing)
    with anyio.fail_after(20), caplog.at_level(logging.WARNING, "service.runner"):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                await stream.send(b"boom\r\n")
                await wait_closed(stream)
            async with connect(server.ws_url) as client:
                assert await client.request({"type": "ping", "id": 1}) == {"type": "reply", "id": 1}
    if anyio_backend == "trio":
        assert "closed a connection after an error in hypercorn" in caplog.text
