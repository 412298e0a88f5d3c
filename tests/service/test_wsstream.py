"""`service.wsstream` driven sans-IO: hypercorn's WebSocket stream with its events in and
out, and no socket (the integration tests run it under a real hypercorn)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import hypercorn.config
import pytest
from hypercorn.protocol.events import Data, EndData, StreamClosed
from hypercorn.protocol.ws_stream import ASGIWebsocketState, Handshake, WSStream
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping, Pong, TextMessage

from service.wsstream import ClosingWSStream, install_closing_stream
from tests.support.rawframes import FIN, TEXT, client_frame

if TYPE_CHECKING:
    from hypercorn.protocol.events import Event

    from service.types import Message, Send


def app_send(ws: WSStream) -> Send:
    """The ``send`` hypercorn gives the app of *ws*."""
    return cast("Send", ws.app_send)


class Stream:
    """A `ClosingWSStream` past its handshake, as hypercorn would hold it, and a
    client's wsproto connection to frame what it sends and parse what it gets."""

    def __init__(self, max_message_bytes: int = 1024) -> None:
        config = hypercorn.config.Config()
        config.websocket_max_message_size = max_message_bytes
        self.sent: list[Event] = []
        self.to_app: list[Message] = []
        ws = WSStream(
            cast("Any", None), config, cast("Any", None), cast("Any", None), False,
            None, None, self._send, 1,
        )  # fmt: skip
        self.ws = cast("ClosingWSStream", ws)  # once `open` installed it
        self.ws.handshake = Handshake([], "1.1")
        self.ws.handshake.accepted = True
        self.ws.connection = Connection(ConnectionType.SERVER)
        self.ws.state = ASGIWebsocketState.CONNECTED
        self.ws.app_put = self._app_put
        self.client = Connection(ConnectionType.CLIENT)

    @classmethod
    async def open(cls, max_message_bytes: int = 1024) -> Stream:
        """A stream that `install_closing_stream` took over."""
        stream = cls(max_message_bytes)
        assert await install_closing_stream(app_send(stream.ws))
        return stream

    async def _send(self, event: Event) -> None:
        self.sent.append(event)

    async def _app_put(self, message: Message) -> None:
        self.to_app.append(message)

    async def receive(self, data: bytes) -> None:
        """Hand the stream *data* from the client, as hypercorn's protocol does."""
        await self.ws.handle(Data(stream_id=1, data=data))

    async def close_stream(self) -> None:
        """What hypercorn's protocol does once the stream sent StreamClosed."""
        await self.ws.handle(StreamClosed(stream_id=1))

    def client_events(self) -> list[object]:
        """What the client parses out of the frames the stream sent."""
        for event in self.sent:
            if isinstance(event, Data):
                self.client.receive_data(event.data)
        self.sent = [event for event in self.sent if not isinstance(event, Data)]
        return list(self.client.events())


async def test_install_takes_over_a_hypercorn_stream_once_and_nothing_else(
    anyio_backend: str,
) -> None:
    stream = await Stream.open()
    assert type(stream.ws) is ClosingWSStream
    assert await install_closing_stream(app_send(stream.ws))  # again: nothing changes
    assert type(stream.ws) is ClosingWSStream

    async def other_server(message: Message) -> None:
        pass

    assert not await install_closing_stream(other_server)

    class TheirStream(WSStream):
        pass

    theirs = TheirStream(
        cast("Any", None), hypercorn.config.Config(), cast("Any", None), cast("Any", None),
        False, None, None, stream._send, 1,
    )  # fmt: skip
    assert not await install_closing_stream(app_send(theirs))
    assert type(theirs) is TheirStream


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (client_frame(FIN | TEXT, b"hi", masked=False), 1002),
        (Connection(ConnectionType.CLIENT).send(TextMessage("é"))[:-1], None),  # cut short
    ],
    ids=["unmasked", "incomplete"],
)
async def test_a_frame_wsproto_cannot_parse_is_closed_with_its_code(
    anyio_backend: str, data: bytes, code: int | None
) -> None:
    stream = await Stream.open()
    await stream.receive(data)
    if code is None:  # nothing wrong yet: more is to come
        assert (stream.sent, stream.to_app) == ([], [])
        return
    (close,) = stream.client_events()
    assert isinstance(close, CloseConnection)
    assert close.code == code
    assert close.reason
    assert stream.sent == [EndData(stream_id=1), StreamClosed(stream_id=1)]
    assert stream.to_app == []  # told once the protocol closes the stream
    await stream.close_stream()
    await stream.close_stream()  # a second time changes nothing
    assert stream.to_app == [{"type": "websocket.disconnect", "code": code}]
    stream.sent.clear()
    await stream.receive(client_frame(FIN | TEXT, b"hi"))  # whatever follows is ignored
    assert (stream.sent, len(stream.to_app)) == ([], 1)


async def test_text_that_is_not_utf8_is_closed_with_1007(anyio_backend: str) -> None:
    stream = await Stream.open()
    await stream.receive(client_frame(FIN | TEXT, b"\xff\xfe"))
    (close,) = stream.client_events()
    assert isinstance(close, CloseConnection)
    assert close.code == 1007


async def test_a_message_over_the_limit_is_closed_with_1009_and_the_app_told(
    anyio_backend: str,
) -> None:
    stream = await Stream.open(max_message_bytes=10)
    await stream.receive(stream.client.send(TextMessage("x" * 11)))
    (close,) = stream.client_events()
    assert isinstance(close, CloseConnection)
    assert (close.code, close.reason) == (1009, "frame too large")
    assert stream.sent == [EndData(stream_id=1), StreamClosed(stream_id=1)]
    await stream.close_stream()
    assert stream.to_app == [{"type": "websocket.disconnect", "code": 1009}]


async def test_messages_pings_and_a_client_close_go_as_in_hypercorn(anyio_backend: str) -> None:
    stream = await Stream.open()
    await stream.receive(stream.client.send(TextMessage("hello")))
    assert stream.to_app == [{"type": "websocket.receive", "text": "hello", "bytes": None}]
    await stream.receive(stream.client.send(Ping(b"p")))
    assert stream.client_events() == [Pong(b"p")]
    await stream.receive(stream.client.send(CloseConnection(1000, "bye")))
    (reply,) = stream.client_events()
    assert isinstance(reply, CloseConnection)
    assert reply.code == 1000
    assert stream.sent == [StreamClosed(stream_id=1)]
    await stream.close_stream()
    # hypercorn tells the app 1006 for a client's close (hypercorn 0.17, 0.18).
    assert stream.to_app[-1] == {"type": "websocket.disconnect", "code": 1006}
