"""Frames that break RFC 6455, sent to a real hypercorn: each is answered with a close
frame carrying its code (1002, 1007 or 1009) before the TCP connection ends, the
disconnect is counted under its own reason, and the server goes on serving others."""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import TYPE_CHECKING

import anyio
import h2.config
import h2.connection
import h2.events
import pytest

from service.settings import AuthSettings, ServerSettings, Settings
from tests.support.auth import OPEN_API, SECRET
from tests.support.closelog import watch_closed_connections
from tests.support.rawframes import (
    BINARY,
    CLOSE,
    CONTINUATION,
    FIN,
    PING,
    RSV1,
    RSV2,
    RSV3,
    TEXT,
    RawWebSocket,
    client_frame,
    close_of,
    open_raw_websocket,
)
from tests.support.server import running_server
from tests.support.wsclient import connect

if TYPE_CHECKING:
    from anyio.abc import ByteStream

    from service.runner import Backend
    from tests.support.server import Server

MAX_REQUEST_BYTES = 1024
CONFIG = Settings(server=ServerSettings(max_request_bytes=MAX_REQUEST_BYTES))
PING_REQUEST = b'{"type":"ping","id":1}'

VIOLATIONS = [
    pytest.param(client_frame(FIN | TEXT, PING_REQUEST, masked=False), 1002, id="unmasked"),
    pytest.param(client_frame(FIN | 0x3, b"x"), 1002, id="reserved-opcode-0x3"),
    pytest.param(client_frame(FIN | 0xB), 1002, id="reserved-control-opcode-0xb"),
    pytest.param(client_frame(FIN | RSV1 | TEXT, PING_REQUEST), 1002, id="rsv1"),
    pytest.param(client_frame(FIN | RSV2 | TEXT, PING_REQUEST), 1002, id="rsv2"),
    pytest.param(client_frame(FIN | RSV3 | TEXT, PING_REQUEST), 1002, id="rsv3"),
    pytest.param(client_frame(PING, b"ping"), 1002, id="fragmented-ping"),
    pytest.param(client_frame(FIN | PING, b"x" * 126), 1002, id="control-over-125-bytes"),
    pytest.param(client_frame(FIN | CONTINUATION, b"x"), 1002, id="orphan-continuation"),
    pytest.param(
        client_frame(TEXT, b'{"type":') + client_frame(FIN | BINARY, b"x"),
        1002,
        id="new-message-inside-a-fragmented-one",
    ),
    pytest.param(client_frame(FIN | CLOSE, b"\x03\xed"), 1002, id="close-with-code-1005"),
    pytest.param(client_frame(FIN | TEXT, b'"\xff\xfe"'), 1007, id="invalid-utf8"),
    pytest.param(
        client_frame(TEXT, b'"\xc3') + client_frame(FIN | CONTINUATION, b'("'),
        1007,
        id="invalid-utf8-across-fragments",
    ),
    pytest.param(
        client_frame(FIN | CLOSE, b"\x03\xe8\xff"), 1007, id="invalid-utf8-in-close-reason"
    ),
    pytest.param(
        client_frame(FIN | TEXT, b"x" * (MAX_REQUEST_BYTES + 1)), 1009, id="over-max-request-bytes"
    ),
    pytest.param(
        client_frame(TEXT, b"x" * 1000) + client_frame(FIN | CONTINUATION, b"x" * 1000),
        1009,
        id="fragments-over-max-request-bytes",
    ),
]

REASONS = {1002: "protocol_error", 1007: "invalid_payload", 1009: "frame_too_large"}


@pytest.mark.parametrize(("frame", "code"), VIOLATIONS)
async def test_a_protocol_violation_is_answered_with_its_close_code(
    anyio_backend: Backend, free_tcp_port: int, frame: bytes, code: int
) -> None:
    with anyio.fail_after(15), watch_closed_connections() as log:
        async with running_server(CONFIG, anyio_backend, free_tcp_port) as server:
            assert server.app is not None
            counters = server.app.counters
            async with connect(server.ws_url) as bystander:
                async with open_raw_websocket(
                    server.host, server.port, server.websocket_path
                ) as raw:
                    # A valid request first: the connection works until the violation.
                    await raw.send(client_frame(FIN | TEXT, PING_REQUEST))
                    assert (await raw.receive_frame()).payload == b'{"type":"reply","id":1}'
                    await raw.send(frame)
                    frames = await raw.frames_until_end()
                close_code, reason = close_of(frames)
                assert (close_code, len(frames)) == (code, 1), reason
                assert reason  # says what was wrong
                (closed,) = await log.wait_for(1)
                assert (closed["code"], closed["reason"]) == (code, REASONS[code])
                assert counters.disconnects == {REASONS[code]: 1}  # not "client"
                # The server goes on serving: the connection open all along, and a new one.
                assert (await bystander.request({"type": "ping", "id": 2}))["id"] == 2
                async with connect(server.ws_url) as newcomer:
                    assert (await newcomer.request({"type": "ping", "id": 3}))["id"] == 3


async def test_a_frame_far_over_the_limit_is_closed_with_1009_while_it_is_still_arriving(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    """The server closes before it has read the whole frame: the close frame still
    reaches the client, which is still sending, and the connection ends."""
    frame = client_frame(FIN | BINARY, b"x" * (4 << 20))

    async def send(raw: RawWebSocket) -> None:
        with suppress(anyio.BrokenResourceError):  # the server stops reading: expected
            await raw.send(frame)

    with anyio.fail_after(15), watch_closed_connections() as log:
        async with running_server(CONFIG, anyio_backend, free_tcp_port) as server:
            assert server.app is not None
            async with (
                open_raw_websocket(server.host, server.port, server.websocket_path) as raw,
                anyio.create_task_group() as tg,
            ):
                tg.start_soon(send, raw)
                frames = await raw.frames_until_end()
            assert close_of(frames) == (1009, "frame too large")
            (closed,) = await log.wait_for(1)
            assert (closed["code"], closed["reason"]) == (1009, "frame_too_large")
            assert server.app.counters.disconnects == {"frame_too_large": 1}


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
)
H2_WEBSOCKET = [
    (":method", "CONNECT"),
    (":protocol", "websocket"),
    (":scheme", "http"),
    (":path", "/ws"),
    (":authority", "127.0.0.1"),
    ("sec-websocket-version", "13"),
]
HOSTILE_HANDSHAKES = [
    # RFC 6455 4.1: a client waits for the handshake's answer before it sends more.
    pytest.param(UPGRADE + b"\r\nxxxxxxxxxxxxxxxx\r\n\r\n", (400,), id="bytes-before-the-answer"),
    pytest.param(
        UPGRADE + b"\r\nGET /health HTTP/1.1\r\nhost: x\r\n\r\n", (400,), id="pipelined-request"
    ),
    pytest.param(
        UPGRADE + b"sec-websocket-protocol: bearer.bad\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
        (400, 401),  # whichever answer goes out first
        id="refused-token-then-a-request",
    ),
    pytest.param(
        UPGRADE + b"sec-websocket-protocol: clarion, bearer.\xff\r\n\r\n",
        (401,),
        id="protocol-header-beyond-ascii",
    ),
    pytest.param(UPGRADE + b"sec-websocket-extensions: x\xff\r\n\r\n", (101,), id="extensions"),
]


@pytest.mark.parametrize(("request_bytes", "statuses"), HOSTILE_HANDSHAKES)
async def test_a_hostile_handshake_is_answered_and_the_server_serves_on(
    anyio_backend: Backend,
    free_tcp_port: int,
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    statuses: tuple[int, ...],
) -> None:
    # Each once ended a trio server through a hypercorn error (one packet, no account).
    config = Settings(auth=AuthSettings(secret=SECRET), server=OPEN_API)
    with anyio.fail_after(20), caplog.at_level(logging.INFO):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            for _ in range(5):
                async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                    await stream.send(request_bytes)
                    answer = await stream.receive()
                    assert int(answer.split(b" ", 2)[1]) in statuses, answer[:200]
            async with connect(server.ws_url) as client:
                assert await client.request({"type": "ping", "id": 1}) == {"type": "reply", "id": 1}
    assert not [record for record in caplog.records if record.exc_info]
    assert "error in hypercorn" not in caplog.text


async def until_closed(stream: ByteStream) -> bytes:
    """All the server sends on *stream* until it closes the connection."""
    received = b""
    with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
        while True:
            received += await stream.receive()
    return received


async def holds_no_slot_and_serves_two(server: Server) -> None:
    """Wait until *server*'s app holds no connection slot; then two clients are served
    (the tests' nodes take two)."""
    assert server.app is not None
    slots = server.app._slots  # the test's view into the app
    while slots.held:  # noqa: ASYNC110 - the app ends on its own task
        await anyio.sleep(0.01)
    async with connect(server.ws_url) as first, connect(server.ws_url) as second:
        for client in (first, second):
            assert await client.request({"type": "ping", "id": 1}) == {"type": "reply", "id": 1}


@pytest.mark.parametrize(
    "early",
    [b"\x81", b"xxxxxxxxxxxxxxxx\r\n\r\n", b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"],
    ids=["a-frame-byte", "bytes", "pipelined-request"],
)
async def test_a_handshake_refused_for_early_bytes_ends_and_frees_its_slot(
    anyio_backend: Backend, free_tcp_port: int, early: bytes
) -> None:
    # On asyncio hypercorn refused these before Clarion's app ran, told the app nothing
    # and kept the connection: max_connections such packets shut every client out.
    config = Settings(server=ServerSettings(max_connections=2))
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            assert server.app is not None
            streams = [await anyio.connect_tcp("127.0.0.1", free_tcp_port) for _ in range(2)]
            for stream in streams:
                await stream.send(UPGRADE + b"\r\n" + early)
            for stream in streams:
                async with stream:  # each is answered, then closed by the server
                    answer = await until_closed(stream)
                    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
            await holds_no_slot_and_serves_two(server)


@pytest.mark.parametrize(
    "request_bytes",
    [
        UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0") + b"\r\n",
        UPGRADE.replace(b"version: 13", b"version: 8") + b"\r\n",
        UPGRADE.replace(b"version: 13", b"version: 8") + b"\r\n\x81",
    ],
    ids=["http-1.0", "version-8", "version-8-and-a-byte"],
)
async def test_a_handshake_hypercorn_refuses_itself_is_closed(
    anyio_backend: Backend, free_tcp_port: int, request_bytes: bytes
) -> None:
    # hypercorn answered these with 400 and "connection: close", then held the
    # connection for as long as the client liked.
    with anyio.fail_after(20):
        async with running_server(CONFIG, anyio_backend, free_tcp_port) as server:
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                await stream.send(request_bytes)
                answer = await until_closed(stream)
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
            async with connect(server.ws_url) as client:
                assert await client.request({"type": "ping", "id": 1}) == {"type": "reply", "id": 1}


async def test_an_http2_websocket_refused_for_early_data_frees_its_slot(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    # RFC 8441: a WebSocket over an HTTP/2 stream. Data before the answer gets 400; on
    # asyncio the app once held each such stream's slot for good.
    config = Settings(server=ServerSettings(max_connections=2, ping_interval_seconds=None))
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with anyio.fail_after(20):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            assert server.app is not None
            async with await anyio.connect_tcp("127.0.0.1", free_tcp_port) as stream:
                client.initiate_connection()
                for _ in range(2):
                    stream_id = client.get_next_available_stream_id()
                    client.send_headers(stream_id, H2_WEBSOCKET)
                    client.send_data(stream_id, b"\x81\x00")  # and unmasked: never a frame
                await stream.send(client.data_to_send())
                statuses: list[bytes] = []
                while len(statuses) < 2:
                    for event in client.receive_data(await stream.receive()):
                        if isinstance(event, h2.events.ResponseReceived):
                            statuses.append(dict(event.headers)[b":status"])
                    await stream.send(client.data_to_send())
                # 400, or (trio, at times) accepted first: the unmasked frame then fails it.
                assert len(statuses) == 2
                assert set(statuses) <= {b"200", b"400"}
            await holds_no_slot_and_serves_two(server)
