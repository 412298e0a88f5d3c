"""The Python client's parts on their own: frame decoding, URLs, and its behaviour
against a scripted WebSocket server (wsproto on 127.0.0.1) that sends exactly what
each test needs: notices, duplicates, fragments, pings, odd close codes and refusals.
The same client against a real Clarion is in ``tests/integration/test_client.py``."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest
from anyio.abc import SocketAttribute, UNIXSocketStream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping as WSPing,
    Pong as WSPong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from channels.publication import ClientInfo, Position
from service.cli import main
from service.client import (
    Client,
    ConnectionClosed,
    ConnectionFailed,
    Gap,
    HandshakeRefused,
    Join,
    Leave,
    Message,
    NotRecovered,
    Restart,
    SubscriptionEnded,
    open_client,
)
from service.client.commands import parse_since, publish_command, subscribe_command
from service.client.connector import Connector
from service.client.events import MessageFrame, ReplyFrame, decode_frames
from service.client.websocket import ClientWebSocket, Endpoint, connect_websocket, parse_url
from service.protocol import Error, ServerPing
from tests.support.data import take

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from anyio.abc import SocketStream
    from wsproto.events import Event

    from service.client import SubscriptionEvent


# Decoding and parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"ping"}', [ServerPing()]),
        (
            '[{"type":"message","channel":"c","offset":1,"data":{"a":1}},'
            '{"type":"reply","id":3,"channel":"c","offset":1,"epoch":"e"}]',
            [
                MessageFrame("c", 1, {"a": 1}),
                ReplyFrame(id=3, channel="c", offset=1, epoch="e"),
            ],
        ),
        (
            '[{"type":"surprise","x":1},{"type":"error","id":1,"code":201,"message":"no"},'
            '{"type":"message","channel":"c"}]',
            [Error(id=1, code=201, message="no")],
        ),
        (
            '{"type":"message","channel":"c","offset":2,"data":null,"extra":1}',
            [MessageFrame("c", 2, None)],
        ),
        ("not json", []),
    ],
    ids=[
        "one-object",
        "coalesced-array",
        "unknown-and-malformed-skipped",
        "extra-field",
        "not-json",
    ],
)
def test_decode_frames(text: str, expected: list[Any]) -> None:
    assert decode_frames(text) == expected


def test_a_frame_that_is_not_json_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "service.client.events"):
        assert decode_frames(b"\xff") == []
    assert "not JSON" in caplog.text


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://127.0.0.1:8000/ws", Endpoint("127.0.0.1", 8000, False, "127.0.0.1:8000", "/ws")),
        ("ws://example.com", Endpoint("example.com", 80, False, "example.com", "/")),
        (
            "wss://example.com/ws?token=t",
            Endpoint("example.com", 443, True, "example.com", "/ws?token=t"),
        ),
        ("ws://[::1]:9/x", Endpoint("::1", 9, False, "[::1]:9", "/x")),
    ],
    ids=["port", "default-port", "tls-and-query", "ipv6"],
)
def test_parse_url(url: str, expected: Endpoint) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["http://127.0.0.1/ws", "ws:///ws", "ws://h:99999/"])
def test_parse_url_refuses_what_is_not_a_websocket_url(url: str) -> None:
    with pytest.raises(ValueError, match="ws://"):
        parse_url(url)


def test_parse_since() -> None:
    assert parse_since("41:3f1c0a9be2d4") == Position(41, "3f1c0a9be2d4")
    for bad in ("41", ":e", "x:e", "41:"):
        with pytest.raises(ValueError, match="OFFSET:EPOCH"):
            parse_since(bad)


# A scripted server --------------------------------------------------------------------------


class PeerClosed(Exception):
    """The client closed the connection (``code`` is its close code)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Peer:
    """The server's end of one scripted connection."""

    def __init__(self, stream: SocketStream, protocol: WSConnection, request: Request) -> None:
        self.stream = stream
        self.protocol = protocol
        self.request = request
        self.pongs: list[bytes] = []

    async def send_event(self, event: Event) -> None:
        await self.stream.send(self.protocol.send(event))

    async def send(self, obj: Any) -> None:
        await self.send_event(TextMessage(data=msgspec.json.encode(obj).decode()))

    async def receive(self) -> Any:
        """Return the next object the client sent; answer its pings and its close."""
        while True:
            for event in self.protocol.events():
                match event:
                    case TextMessage(data=data) | BytesMessage(data=data):
                        return msgspec.json.decode(data)
                    case WSPing():
                        await self.send_event(event.response())
                    case WSPong(payload=payload):
                        self.pongs.append(bytes(payload))
                    case CloseConnection(code=code):
                        if self.protocol.state is ConnectionState.REMOTE_CLOSING:
                            await self.send_event(event.response())
                        raise PeerClosed(code)
            try:
                self.protocol.receive_data(await self.stream.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                raise PeerClosed(1006) from None

    async def subscribed(self, epoch: str = "e1", offset: int = 0, **extra: Any) -> Any:
        """Answer the client's next request, a subscribe; return it."""
        request = await self.receive()
        assert request["type"] == "subscribe", request
        reply = {"type": "reply", "id": request["id"], "channel": request["channel"]}
        await self.send({**reply, "offset": offset, "epoch": epoch, **extra})
        return request

    async def wait_closed(self) -> int:
        """Read until the client closes; return its close code."""
        try:
            while True:
                await self.receive()
        except PeerClosed as closed:
            return closed.code


@asynccontextmanager
async def scripted_server(
    script: Callable[[Peer, int], Awaitable[None]],
    refuse: Callable[[int], tuple[int, bytes] | None] = lambda index: None,
) -> AsyncIterator[str]:
    """Serve WebSockets on 127.0.0.1; run *script* for each connection (with its index,
    from 0), unless *refuse* gives an HTTP status and body for it. Yield the URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)
    counter = itertools.count()

    async def handle(stream: SocketStream) -> None:
        async with stream:
            index = next(counter)
            protocol = WSConnection(ConnectionType.SERVER)
            request = None
            while request is None:
                protocol.receive_data(await stream.receive())
                request = next((e for e in protocol.events() if isinstance(e, Request)), None)
            refusal = refuse(index)
            if refusal is not None:
                status, body = refusal
                headers = [(b"content-length", str(len(body)).encode())]
                head = RejectConnection(status_code=status, headers=headers, has_body=True)
                await stream.send(protocol.send(head) + protocol.send(RejectData(data=body)))
                return
            chosen = "clarion" if "clarion" in request.subprotocols else None
            await stream.send(protocol.send(AcceptConnection(subprotocol=chosen)))
            await script(Peer(stream, protocol, request), index)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"ws://127.0.0.1:{port}/ws"
        tg.cancel_scope.cancel()


#: Reconnect at once: the scripted server is local.
FAST: dict[str, Any] = {"backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.05}
CONNECTOR: dict[str, Any] = {
    "token": None,
    "get_token": None,
    "ssl_context": None,
    **FAST,
    "connect_timeout_seconds": 1.0,
    "max_message_bytes": 1 << 20,
    "write_buffer_bytes": 1 << 16,
}


def message(offset: int, data: Any = None, channel: str = "c") -> dict[str, Any]:
    return {"type": "message", "channel": channel, "offset": offset, "data": data}


# Behaviour ----------------------------------------------------------------------------------


async def test_notices_are_items_of_the_stream_in_order(anyio_backend: str) -> None:
    info = {"client": "k1", "user": "ann"}

    async def script(peer: Peer, index: int) -> None:
        assert peer.request.subprotocols == ["clarion"]
        await peer.subscribed("e1")
        await peer.send(
            [
                message(1, "a"),
                {"type": "gap", "channel": "c", "first": 2, "last": 3},
                message(4, "d"),
                {"type": "join", "channel": "c", "info": info},
                {"type": "restart", "channel": "c", "epoch": "e2"},
                message(1, "new"),
                {"type": "leave", "channel": "c", "info": info},
                {"type": "future-notice", "channel": "c"},
                message(5, "other channel", channel="elsewhere"),
            ]
        )
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url, open_client(url) as client:
            async with client.subscribe("c") as sub:
                assert sub.position == Position(0, "e1")
                assert await take(sub, 7) == [
                    Message("c", 1, "e1", "a"),
                    Gap("c", 2, 3),
                    Message("c", 4, "e1", "d"),
                    Join("c", ClientInfo("k1", "ann")),
                    Restart("c", "e2"),
                    Message("c", 1, "e2", "new"),
                    Leave("c", ClientInfo("k1", "ann")),
                ]
                assert sub.position == Position(1, "e2")


async def test_duplicates_are_dropped_and_fragments_joined(anyio_backend: str) -> None:
    async def script(peer: Peer, index: int) -> None:
        await peer.subscribed("e1", offset=5)
        await peer.send([message(5, "old"), message(6, "six"), message(6, "again")])
        # One message in three fragments, then one as a binary frame.
        text = msgspec.json.encode(message(7, "x" * 100)).decode()
        for start, finished in ((0, False), (40, False), (80, True)):
            end = len(text) if finished else start + 40
            part = TextMessage(data=text[start:end], message_finished=finished)
            await peer.send_event(part)
        await peer.send_event(BytesMessage(data=msgspec.json.encode(message(8, "b"))))
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url, open_client(url) as client:
            async with client.subscribe("c") as sub:
                events = await take(sub, 3)
                assert [event.data for event in events if isinstance(event, Message)] == [
                    "six",
                    "x" * 100,
                    "b",
                ]
                assert client.statistics().duplicates_dropped == 2


async def test_pings_are_answered(anyio_backend: str) -> None:
    answered = anyio.Event()

    async def script(peer: Peer, index: int) -> None:
        await peer.send({"type": "ping"})
        assert await peer.receive() == {"type": "pong"}
        await peer.send_event(WSPing(payload=b"hello"))
        await peer.send({"type": "ping"})  # answered after the WebSocket pong
        assert await peer.receive() == {"type": "pong"}
        assert peer.pongs == [b"hello"]
        answered.set()
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url, open_client(url) as client:
            await answered.wait()
            assert client.statistics().pongs_sent == 2


async def test_a_lost_connection_fails_its_requests_and_resubscribes_since_the_last_offset(
    anyio_backend: str,
) -> None:
    resubscribed = anyio.Event()

    async def script(peer: Peer, index: int) -> None:
        if index == 0:
            await peer.subscribed("e1", offset=2)
            await peer.send(message(3, "three"))
            request = await peer.receive()  # a publish, never answered:
            assert request["type"] == "publish"
            return  # the connection drops (1006)
        request = await peer.subscribed("e1", offset=5, recovered=True)
        assert request["since"] == {"offset": 3, "epoch": "e1"}
        resubscribed.set()
        await peer.send([message(3, "three again"), message(4, "four"), message(5, "five")])
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url, open_client(url, **FAST) as client:
            async with client.subscribe("c") as sub:
                assert await take(sub, 1) == [Message("c", 3, "e1", "three")]
                with pytest.raises(ConnectionClosed) as caught:
                    await client.publish("c", "lost")
                assert caught.value.code == 1006
                await resubscribed.wait()
                assert await take(sub, 2) == [
                    Message("c", 4, "e1", "four"),
                    Message("c", 5, "e1", "five"),
                ]
                stats = client.statistics()
                assert (stats.connections, stats.duplicates_dropped) == (2, 1)


async def test_a_refused_resubscription_ends_only_that_subscription(anyio_backend: str) -> None:
    async def script(peer: Peer, index: int) -> None:
        if index == 0:
            await peer.subscribed("e1")
            await peer.send(message(1, "one"))
            await peer.send_event(CloseConnection(code=4002, reason="no pong"))
            await peer.wait_closed()
            return
        request = await peer.receive()
        error = {"type": "error", "code": 202, "message": "not for you"}
        await peer.send({**error, "id": request["id"]})
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url, open_client(url, **FAST) as client:
            async with client.subscribe("c") as sub:
                assert await take(sub, 1) == [Message("c", 1, "e1", "one")]
                with pytest.raises(SubscriptionEnded) as caught:
                    await sub.receive()
                assert (caught.value.code, caught.value.channel) == (202, "c")
            assert client.statistics().connected


async def test_not_recovered_reports_what_was_asked_and_where_it_resumes(
    anyio_backend: str,
) -> None:
    async def script(peer: Peer, index: int) -> None:
        request = await peer.subscribed("e2", offset=9, recovered=False)
        assert request["since"] == {"offset": 4, "epoch": "e1"}
        await peer.send(message(10, "ten"))
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url, open_client(url) as client:
            async with client.subscribe("c", since=Position(4, "e1")) as sub:
                assert sub.position == Position(4, "e1")
                assert await take(sub, 2) == [
                    NotRecovered("c", Position(4, "e1"), Position(9, "e2")),
                    Message("c", 10, "e2", "ten"),
                ]


@pytest.mark.parametrize(
    ("close", "expected"),
    [
        (CloseConnection(code=1011, reason="boom"), 1011),
        (CloseConnection(code=4001, reason="token expired"), 4001),  # and no get_token
        (TextMessage(data='"' + "x" * 2000 + '"'), 1009),
    ],
    ids=["1011", "4001-without-get_token", "message-too-big"],
)
async def test_a_close_it_does_not_reconnect_after_ends_the_client(
    anyio_backend: str, close: Event, expected: int
) -> None:
    async def script(peer: Peer, index: int) -> None:
        assert index == 0
        await peer.subscribed("e1")
        await peer.send_event(close)
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url:
            async with open_client(url, max_message_bytes=1000, **FAST) as client:
                async with client.subscribe("c") as sub:
                    with pytest.raises(ConnectionClosed) as caught:
                        await sub.receive()
                    assert caught.value.code == expected
                with pytest.raises(ConnectionClosed):
                    await client.publish("c", 1)


async def test_reconnecting_retries_busy_refusals_and_fetches_tokens(anyio_backend: str) -> None:
    refusals = {
        1: (503, b"<html>busy proxy</html>"),
        2: (401, b'{"type":"error","code":110,"message":"token expired"}'),
    }
    tokens = iter(["second", "third"])

    async def get_token() -> str:
        return next(tokens)

    async def script(peer: Peer, index: int) -> None:
        token = next(p for p in peer.request.subprotocols if p.startswith("bearer."))
        if index == 0:
            assert token == "bearer.first"
            await peer.send_event(CloseConnection(code=1001, reason="going away"))
            await peer.wait_closed()
            return
        assert (index, token) == (3, "bearer.second")
        request = await peer.receive()
        assert request["type"] == "ping"
        await peer.send({"type": "reply", "id": request["id"]})
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with (
            scripted_server(script, refusals.get) as url,
            open_client(url, token="first", get_token=get_token, **FAST) as client,
        ):
            await client.ping()  # waits through both refusals
            stats = client.statistics()
            assert (stats.connections, stats.failed_attempts) == (2, 2)


async def test_a_refusal_that_waiting_cannot_fix_ends_the_client(anyio_backend: str) -> None:
    refusal = (404, b'{"type":"error","code":104,"message":"no route"}')

    async def script(peer: Peer, index: int) -> None:
        await peer.subscribed("e1")
        await peer.send_event(CloseConnection(code=1001))
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with (
            scripted_server(script, lambda index: refusal if index else None) as url,
            open_client(url, **FAST) as client,
            client.subscribe("c") as sub,
        ):
            with pytest.raises(HandshakeRefused) as caught:
                await sub.receive()
            assert (caught.value.status, caught.value.code) == (404, 104)
            with pytest.raises(HandshakeRefused):
                await client.ping()


async def test_closing_ends_streams_quietly_and_closes_with_1000(anyio_backend: str) -> None:
    closed = anyio.Event()
    codes: list[int] = []

    async def script(peer: Peer, index: int) -> None:
        await peer.subscribed("e1")
        codes.append(await peer.wait_closed())
        closed.set()

    with anyio.fail_after(10):
        async with scripted_server(script) as url, open_client(url) as client:
            async with client.subscribe("c") as sub:
                async with anyio.create_task_group() as tg:
                    received: list[SubscriptionEvent] = []

                    async def consume() -> None:
                        async for event in sub:  # ends quietly when the client closes
                            received.append(event)

                    tg.start_soon(consume)
                    await client.aclose()
                assert received == []
                with pytest.raises(anyio.ClosedResourceError):
                    await client.publish("c", 1)
                await client.aclose()  # idempotent
            await closed.wait()
            assert codes == [1000]


# The commands, in process -------------------------------------------------------------------


async def test_the_subscribe_command_prints_json_lines_and_notices(
    anyio_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    info = {"client": "k1", "user": None}

    async def script(peer: Peer, index: int) -> None:
        request = await peer.subscribed("e2", offset=7, recovered=False)
        assert request["since"] == {"offset": 3, "epoch": "e1"}
        await peer.send(
            [
                message(8, {"n": 8}),
                {"type": "gap", "channel": "c", "first": 9, "last": 10},
                {"type": "join", "channel": "c", "info": info},
                {"type": "leave", "channel": "c", "info": info},
                {"type": "restart", "channel": "c", "epoch": "e3"},
                message(1, "one"),
                message(2, "not printed: --count 2"),
            ]
        )
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url:
            assert await subscribe_command(url, None, ["c"], Position(3, "e1"), 2) == 0
    out, err = capsys.readouterr()
    assert [msgspec.json.decode(line) for line in out.splitlines()] == [
        {"channel": "c", "offset": 8, "epoch": "e2", "data": {"n": 8}},
        {"channel": "c", "offset": 1, "epoch": "e3", "data": "one"},
    ]
    assert err.splitlines() == [
        "clarion: subscribed to c at 7:e2, replaying after 3:e1",
        "clarion: c: not recovered: the messages after 3:e1 up to 7:e2 are lost",
        "clarion: c: gap: offsets 9 to 10 were dropped",
        "clarion: c: join: client k1, user none",
        "clarion: c: leave: client k1, user none",
        "clarion: c: restart: the stream began again in epoch e3",
    ]


async def test_the_subscribe_command_exits_1_when_a_subscription_ends(
    anyio_backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def script(peer: Peer, index: int) -> None:
        await peer.subscribed("e1")
        await peer.subscribed("e1")
        ended = {"type": "unsubscribed", "channel": "b", "code": 202, "message": "no more"}
        await peer.send([message(1, "b", channel="b"), ended])
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url:
            assert await subscribe_command(url, None, ["a", "b"], None, None) == 1
    out, err = capsys.readouterr()
    assert msgspec.json.decode(out)["data"] == "b"  # printed before the error
    assert err.splitlines()[-1] == "clarion: error: 202 subscription to 'b' ended: no more"


async def test_the_publish_command(anyio_backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def script(peer: Peer, index: int) -> None:
        request = await peer.receive()
        assert request == {"type": "publish", "id": 1, "channel": "c", "data": {"a": [1, 2]}}
        if index == 0:
            reply = {"type": "reply", "id": 1, "channel": "c", "offset": 5, "epoch": "e1"}
        else:
            reply = {"type": "error", "id": 1, "code": 208, "message": "data.a: Expected `str`"}
        await peer.send(reply)
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url:
            assert await publish_command(url, "t", "c", '{"a": [1, 2]}') == 0
            assert capsys.readouterr().out == '{"offset":5,"epoch":"e1"}\n'
            assert await publish_command(url, None, "c", '{"a": [1, 2]}') == 1
            assert capsys.readouterr().err == "clarion: error: 208 data.a: Expected `str`\n"
            assert await publish_command(url, None, "c", "{oops") == 2
            assert capsys.readouterr().err.startswith("clarion: error: DATA is not JSON: ")


async def test_refresh_gives_later_connections_the_new_token(anyio_backend: str) -> None:
    async def script(peer: Peer, index: int) -> None:
        offered = [p for p in peer.request.subprotocols if p.startswith("bearer.")]
        if index == 0:
            assert offered == ["bearer.old"]
            request = await peer.receive()
            assert request == {"type": "refresh", "id": 1, "token": "new"}
            await peer.send({"type": "error", "code": 100, "message": "stray, no id"})
            await peer.send({"type": "reply", "id": 1})
            assert (await peer.receive())["type"] == "ping"  # closed on, unanswered
            await peer.send_event(CloseConnection(code=1001))
            await peer.wait_closed()
            return
        assert offered == ["bearer.new"]
        request = await peer.receive()
        await peer.send({"type": "reply", "id": request["id"]})
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url, open_client(url, token="old", **FAST) as client:
            await client.refresh("new")
            with pytest.raises(ConnectionClosed) as caught:
                await client.ping()  # sent, then its connection closed: it fails
            assert caught.value.code == 1001
            await client.ping()  # on the next connection, which offered the new token
            assert client.statistics().connections == 2


async def test_closing_fails_a_request_that_waits_for_its_reply(anyio_backend: str) -> None:
    async def script(peer: Peer, index: int) -> None:
        await peer.receive()  # never answered
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script) as url, open_client(url) as client:
            async with anyio.create_task_group() as tg:

                async def unanswered() -> None:
                    with pytest.raises(anyio.ClosedResourceError):
                        await client.ping()

                tg.start_soon(unanswered)
                await anyio.wait_all_tasks_blocked()
                await client.aclose()


def test_a_buffer_needs_room_for_one_event() -> None:
    with pytest.raises(ValueError, match="buffer_events must be at least 1"):
        Client(Connector("ws://127.0.0.1/ws", **CONNECTOR), buffer_events=0, reconnect=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["publish", "c", "1", "--url", "http://h/ws"], "--url: 'http://h/ws' is not a ws://"),
        (["subscribe", "a", "b", "--since", "1:e"], "--since needs exactly one CHANNEL"),
        (["subscribe", "a", "--since", "e:1"], "--since: 'e:1' is not OFFSET:EPOCH"),
        (["subscribe", "a", "--count", "0"], "--count must be at least 1"),
    ],
    ids=["url", "since-with-two-channels", "since-form", "count"],
)
def test_the_commands_refuse_bad_options_before_connecting(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"clarion: error: {message}")


async def test_tokens_for_the_first_connection_and_a_failing_get_token(anyio_backend: str) -> None:
    refusals = {1: (401, b'{"type":"error","code":110,"message":"token expired"}')}
    tokens = iter(["t1", "t2"])

    async def get_token() -> str:
        return next(tokens)

    async def broken_get_token() -> str:
        raise OSError("the token service is down")

    async def script(peer: Peer, index: int) -> None:
        offered = [p for p in peer.request.subprotocols if p.startswith("bearer.")]
        assert offered == {0: ["bearer.t1"], 2: ["bearer.t2"], 3: ["bearer.x"]}[index]
        if index == 3:
            await peer.send_event(CloseConnection(code=4001, reason="token expired"))
        await peer.wait_closed()

    with anyio.fail_after(10):
        async with scripted_server(script, refusals.get) as url:
            async with open_client(url, get_token=get_token):
                pass  # no token: get_token gave the first
            async with open_client(url, token="stale", get_token=get_token):
                pass  # refused with 110: get_token gave another, once
            async with open_client(url, token="x", get_token=broken_get_token, **FAST) as client:
                with pytest.raises(ConnectionFailed) as caught:
                    await client.ping()  # after 4001, get_token fails: the client ends
                assert isinstance(caught.value.__cause__, OSError)


async def test_a_server_that_never_answers_the_upgrade_times_out(anyio_backend: str) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)

    async def silent(stream: SocketStream) -> None:
        async with stream:
            await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent)
            with pytest.raises(ConnectionFailed, match=r"no WebSocket within 0\.2 seconds"):
                async with open_client(f"ws://127.0.0.1:{port}/ws", connect_timeout_seconds=0.2):
                    pass
            tg.cancel_scope.cancel()


# The transport on its own -----------------------------------------------------------------


@asynccontextmanager
async def answering_server(answer: bytes) -> AsyncIterator[str]:
    """Serve on 127.0.0.1: read an upgrade request, send *answer*, close. Yield the URL."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(SocketAttribute.local_port)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await stream.receive()
            await stream.send(answer)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield f"ws://127.0.0.1:{port}/ws"
        tg.cancel_scope.cancel()


async def connect(url: str) -> ClientWebSocket:
    return await connect_websocket(url, max_message_bytes=1 << 20, write_buffer_bytes=1 << 16)


async def test_a_refusal_whose_body_ends_with_the_connection_keeps_its_code(
    anyio_backend: str,
) -> None:
    # No content-length: the body is read until the server closes (HTTP/1.1 allows it).
    body = b'{"type":"error","code":104,"message":"no route"}'
    with anyio.fail_after(10):
        async with answering_server(b"HTTP/1.1 404 Not Found\r\n\r\n" + body) as url:
            with pytest.raises(HandshakeRefused) as caught:
                await connect(url)
    assert (caught.value.status, caught.value.code) == (404, 104)
    assert caught.value.message == "HTTP 404: no route"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"", r"ws://127\.0\.0\.1:\d+/ws closed the connection during the handshake"),
        (b"HTTP/1.1 101 Switching", r"did not answer as a WebSocket server: Bad HTTP message"),
        (b"SSH-2.0-OpenSSH_9.6\r\n", r"did not answer as a WebSocket server: Bad HTTP message"),
        (b"garbage\r\n\r\n", r"did not answer as a WebSocket server: Bad HTTP message"),
    ],
    ids=["closed-without-answer", "closed-mid-answer", "ssh-server", "garbage"],
)
async def test_a_peer_that_does_not_answer_the_upgrade_fails_the_connection(
    anyio_backend: str, answer: bytes, expected: str
) -> None:
    with anyio.fail_after(10):
        async with answering_server(answer) as url:
            with pytest.raises(ConnectionFailed, match=expected) as caught:
                await connect(url)
    assert caught.value.__cause__ is not None  # the reason is chained


@asynccontextmanager
async def websocket_pair(
    *, max_message_bytes: int = 1 << 20, write_buffer_bytes: int = 1 << 16
) -> AsyncIterator[tuple[ClientWebSocket, Peer]]:
    """An open `ClientWebSocket` over a socketpair, and the scripted server's end; the
    opening handshake is done in memory, sans-IO."""
    ours, theirs = socket.socketpair()
    client_stream = await UNIXSocketStream.from_socket(ours)
    server_stream = await UNIXSocketStream.from_socket(theirs)
    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="clarion", target="/ws")))
    (request,) = server.events()
    assert isinstance(request, Request)
    client.receive_data(server.send(AcceptConnection()))
    assert [type(event) for event in client.events()] == [AcceptConnection]
    websocket = ClientWebSocket(
        client_stream,
        client,
        subprotocol=None,
        max_message_bytes=max_message_bytes,
        write_buffer_bytes=write_buffer_bytes,
    )
    async with server_stream:
        peer = Peer(server_stream, server, request)
        try:
            yield websocket, peer
        finally:
            with anyio.move_on_after(5, shield=True):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(answer_close, peer)
                    await websocket.aclose()


async def answer_close(peer: Peer) -> None:
    """Answer the client's close, unless the test closed the server's end already."""
    with contextlib.suppress(anyio.ClosedResourceError):
        await peer.wait_closed()


async def test_fragments_of_a_binary_message_are_joined_as_bytes(anyio_backend: str) -> None:
    with anyio.fail_after(10):
        async with websocket_pair() as (websocket, peer):
            await peer.send_event(BytesMessage(data=b'{"a":', message_finished=False))
            await peer.send_event(BytesMessage(data=b"[1, 2]", message_finished=False))
            await peer.send_event(BytesMessage(data=b"}", message_finished=True))
            assert await websocket.receive() == b'{"a":[1, 2]}'


async def test_an_oversize_message_is_cut_off_and_closed_with_1009(anyio_backend: str) -> None:
    with anyio.fail_after(10):
        async with websocket_pair(max_message_bytes=10) as (websocket, peer):
            await peer.send_event(TextMessage(data="x" * 8, message_finished=False))
            await peer.send_event(TextMessage(data="y" * 8, message_finished=False))
            await peer.send_event(TextMessage(data="z" * 8, message_finished=True))
            await peer.send('"after"')
            async with anyio.create_task_group() as tg:
                tg.start_soon(websocket.run_writer)
                with pytest.raises(ConnectionClosed) as caught:
                    await websocket.receive()  # nothing of it, nor what follows
                assert (caught.value.code, caught.value.reason) == (
                    1009,
                    "a message over 10 bytes",
                )
                assert await peer.wait_closed() == 1009
                tg.cancel_scope.cancel()
            with pytest.raises(ConnectionClosed):
                websocket.send_nowait('"late"')


async def test_send_waits_while_the_queue_is_over_its_bound(anyio_backend: str) -> None:
    big = "x" * 100
    with anyio.fail_after(10):
        async with websocket_pair(write_buffer_bytes=64) as (websocket, peer):
            websocket.send_nowait(msgspec.json.encode(big).decode())  # over the bound
            sent = anyio.Event()

            async def send_second() -> None:
                await websocket.send('"second"')
                sent.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_second)
                await anyio.wait_all_tasks_blocked()
                assert not sent.is_set()  # nothing drains the queue yet
                tg.start_soon(websocket.run_writer)
                await sent.wait()
                assert [await peer.receive(), await peer.receive()] == [big, "second"]
                tg.cancel_scope.cancel()


async def test_a_socket_that_breaks_under_the_writer_ends_the_connection_with_1006(
    anyio_backend: str,
) -> None:
    with anyio.fail_after(10):
        async with websocket_pair() as (websocket, peer):
            await peer.stream.aclose()  # the server's end is gone: sending fails (EPIPE)
            websocket.send_nowait('"lost"')
            await websocket.run_writer()  # returns: the loss is reported by the reader
            assert websocket.closed is not None
            with pytest.raises(ConnectionClosed) as caught:
                await websocket.receive()
            assert caught.value.code == 1006
            assert caught.value.reason.startswith("sending failed: ")
            with pytest.raises(ConnectionClosed) as refused:
                await websocket.send('"after"')
            assert refused.value.code == 1006


# The commands, as processes ---------------------------------------------------------------

CLARION = str(Path(sys.executable).parent / "clarion")


async def test_the_subscribe_command_ends_quietly_when_its_reader_goes(anyio_backend: str) -> None:
    # As in `clarion subscribe c | head -n 1`: the pipe closes after the first line.
    reader_gone = anyio.Event()
    codes: list[int] = []

    async def script(peer: Peer, index: int) -> None:
        await peer.subscribed("e1")
        await peer.send(message(1, "first"))
        await reader_gone.wait()
        await peer.send(message(2, "nobody reads this"))
        codes.append(await peer.wait_closed())

    with anyio.fail_after(20):
        async with scripted_server(script) as url:
            argv = [CLARION, "subscribe", "c", "--url", url]
            # A pipe of our own: closing anyio's asyncio stdout stream leaves its fd open.
            read_end, write_end = os.pipe()
            try:
                async with await anyio.open_process(argv, stdout=write_end) as proc:
                    os.close(write_end)
                    write_end = -1
                    line = b""
                    while not line.endswith(b"\n"):
                        await anyio.wait_readable(read_end)
                        line += os.read(read_end, 65536)
                    os.close(read_end)
                    read_end = -1
                    reader_gone.set()
                    assert await proc.wait() == 0
                    assert proc.stderr is not None
                    errors = b"".join([chunk async for chunk in proc.stderr]).decode()
            finally:
                for fd in (read_end, write_end):
                    if fd != -1:
                        os.close(fd)
    assert msgspec.json.decode(line)["data"] == "first"
    assert errors == "clarion: subscribed to c at 0:e1\n"  # no BrokenPipeError traceback
    assert codes == [1000]


async def test_the_publish_command_gives_up_after_its_timeout(anyio_backend: str) -> None:
    async def script(peer: Peer, index: int) -> None:
        assert (await peer.receive())["type"] == "publish"  # never answered
        await peer.wait_closed()

    with anyio.fail_after(20):
        async with scripted_server(script) as url:
            argv = [CLARION, "publish", "c", "1", "--url", url, "--timeout", "0.3"]
            done = await anyio.run_process(argv, check=False)
    assert done.returncode == 1
    assert done.stdout == b""
    assert done.stderr.decode() == f"clarion: error: no reply from {url} within 0.3 seconds\n"


async def test_a_refusal_cut_short_keeps_its_status(anyio_backend: str) -> None:
    answer = b'HTTP/1.1 403 Forbidden\r\ncontent-length: 50\r\n\r\n{"'
    with anyio.fail_after(10):
        async with answering_server(answer) as url:
            with pytest.raises(HandshakeRefused) as caught:
                await connect(url)
    assert caught.value.status == 403
