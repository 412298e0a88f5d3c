"""hypercorn's WebSocket stream, made to fail a connection with a close frame.

RFC 6455 asks an endpoint that must *Fail the WebSocket Connection* to send a close
frame with a status code first, when the connection still allows it (section 7.1.7):
1002 for a protocol error (section 7.4.1), such as an unmasked client frame (section
5.1), reserved bits or opcodes (section 5.2), a fragmented or oversized control frame
(section 5.5) or a continuation that continues nothing (section 5.4); 1007 for a text
message that is not UTF-8 (section 8.1); and 1009 for a message too big to process.

hypercorn (0.17 and 0.18, ``hypercorn/protocol/ws_stream.py``, ``WSStream``) does not:

- wsproto reports a frame it cannot parse as a ``CloseConnection`` event with the code
  while its connection is still OPEN. hypercorn answers a ``CloseConnection`` only in
  the REMOTE_CLOSING state, so it closes the TCP connection without a close frame: the
  client sees 1006, and the app is told 1006, as if the client had dropped.
- For a message over its ``websocket_max_message_size`` it sends close 1009 but tells
  the app nothing, and keeps the connection until the client answers the close; the
  app is then told 1006, again as if the client had left.

`ClosingWSStream` sends the close frame with the code (and wsproto's short account of
what was wrong as the reason), tells the app ``websocket.disconnect`` with that same
code, and closes the connection. The close frame goes through hypercorn's own send,
as its other frames do, so `service.framewriter` sees it: no frame of Clarion's is cut
by it or written after it, and the TCP connection is closed only after it.

The connection is closed at once, without waiting for the client's close frame (RFC
6455 7.1.7): the client may still be sending (a message far over the limit), and what
the server has not read then makes its kernel end the connection with a reset, after
the close frame, which the client still reads (tested on Linux with a 4 MiB frame).

Two more hypercorn 0.18 defects let a single hostile packet end a trio server (an error
escapes its connection handler; asyncio only logs it):

- Bytes that follow an upgrade request before its answer (RFC 6455 4.1: a client waits
  for the handshake's answer) get a 400, and the app's accept under way then raises
  (h11's ``LocalProtocolError``), as does a second 400 for the next bytes.
  `ClosingWSStream` answers them once, tells the app ``websocket.disconnect`` with 1002,
  closes the connection, and ignores what follows. When such bytes come in the same
  packet as the handshake, hypercorn's own class may meet them before the app has run
  (always on asyncio): its 400 then neither tells the app nor closes the connection,
  which would hold a ``max_connections`` slot for as long as the client likes (over
  HTTP/2, RFC 8441, a hundred of them on one TCP connection).
  `install_closing_stream` finds such a stream and ends it the same way.
- A ``Sec-WebSocket-Protocol``, ``-Extensions`` or ``Connection`` header with a byte
  beyond ASCII makes hypercorn's handshake parser raise ``UnicodeDecodeError`` before
  any app runs. This module makes that parser keep such a value as Latin-1 (as HTTP/1.1
  header values are), for every hypercorn WebSocket in the process: the app then judges
  the handshake (a token that does not verify gets 401).

`service.runner` also keeps an error of one connection from ending a trio server (or
from being logged as a traceback on asyncio), and `service.fastlane` closes a connection
whose handshake hypercorn refused itself.

`install_closing_stream` puts it in place for one connection, from the app, when the
connection is hypercorn's, rather than replacing the ``WSStream`` name that hypercorn's
HTTP/1.1 and HTTP/2 protocols look up: that would change the WebSockets of any other
app in the process, and would have to be installed wherever Clarion is started
(``service.runner.serve`` for ``clarion serve`` and ``--workers``, ``create_app`` for
the hypercorn command), whereas every one of those goes through the app. The class of
a live stream can change because `ClosingWSStream` adds no state but a class default.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Final, cast

import anyio
import h2.connection
import h11
from hypercorn.protocol import ws_stream
from hypercorn.protocol.events import Body, Data, EndData, StreamClosed
from hypercorn.protocol.ws_stream import ASGIWebsocketState, FrameTooLargeError, WSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

if TYPE_CHECKING:
    from hypercorn.protocol.events import Event
    from hypercorn.typing import WebsocketAcceptEvent, WebsocketResponseBodyEvent

    from service.types import Send

__all__ = ("ClosingWSStream", "install_closing_stream")

#: The reason sent with close 1009, as Clarion's own check sends it (`service.session`).
_TOO_LARGE_REASON: Final = "frame too large"

#: How long a refusal hypercorn is writing may take before the connection is closed
#: regardless, and how often it is looked at (a 400 with no body: one write).
_REFUSAL_WRITE_SECONDS: Final = 1.0
_REFUSAL_POLL_SECONDS: Final = 0.005


class ClosingWSStream(WSStream):
    """hypercorn's WebSocket stream, which fails a connection with a close frame.

    See the module docstring for what it changes, and why.
    """

    _failed_with: int | None = None
    """The close code the connection was failed with, once it was."""

    async def handle(self, event: Event) -> None:
        """Handle *event* as hypercorn does, except the end of a failed connection (the
        app is told the close code it was failed with, not 1006) and bytes before the
        handshake's answer."""
        if isinstance(event, Body | Data) and not self.handshake.accepted:
            if not self.closed:
                await self._refuse_early_data()
            return
        if isinstance(event, StreamClosed) and self._failed_with is not None:
            if not self.closed:
                self.closed = True
                if self.app_put is not None:
                    await self.app_put({"type": "websocket.disconnect", "code": self._failed_with})
            return
        if isinstance(event, StreamClosed) and self.closed and not self.handshake.accepted:
            # hypercorn refused early bytes while this class was being put in place (an
            # HTTP/2 stream on trio): the app waits for the handshake's end, hear it now.
            if self.state is ASGIWebsocketState.HANDSHAKE:
                self.state = ASGIWebsocketState.HTTPCLOSED
                await self._tell_app(CloseReason.PROTOCOL_ERROR)
            return
        await super().handle(event)

    # The app's answer to the handshake (hypercorn's app_send calls these): hypercorn
    # may have answered bytes that came before it with a 400 already, before this class
    # was in place. The connection is over then: a second answer would fail in h11, or
    # write to the socket while the 400 is written.
    async def _accept(self, message: WebsocketAcceptEvent) -> None:
        if self._answer_begun():
            await self._end_answered()
            return
        try:
            await super()._accept(message)
        except h11.LocalProtocolError:
            await self._end_answered()

    async def _send_rejection(self, message: WebsocketResponseBodyEvent) -> None:
        if self.state is ASGIWebsocketState.HANDSHAKE and self._answer_begun():
            await self._end_answered()
            return
        try:
            await super()._send_rejection(message)
        except h11.LocalProtocolError:
            await self._end_answered()

    def _answer_begun(self) -> bool:
        """Whether an answer to this handshake began (hypercorn's or the app's): over
        HTTP/1.1 h11 left SEND_RESPONSE; over HTTP/2 (RFC 8441) the stream's headers
        went out, or the stream is over."""
        connection = getattr(getattr(self.send, "__self__", None), "connection", None)
        over_h11 = getattr(connection, "h11_connection", None)
        if isinstance(over_h11, h11.Connection):
            return over_h11.our_state is not h11.SEND_RESPONSE
        if isinstance(connection, h2.connection.H2Connection):
            stream = connection.streams.get(self.stream_id)
            return stream is None or bool(stream.state_machine.headers_sent)
        return False

    async def _end_answered(self) -> None:
        if not self.closed:
            self.closed = True
            await self._tell_app(CloseReason.PROTOCOL_ERROR)

    async def _refuse_early_data(self) -> None:
        if self._answer_begun():
            # The app's refusal is being written: it ends the exchange, and these bytes
            # are dropped (closing the connection now would cut it off mid-write).
            return
        # Closed first: an accept under way in the app then sends nothing.
        self.closed = True
        self.state = ASGIWebsocketState.HTTPCLOSED
        await self._tell_app(CloseReason.PROTOCOL_ERROR)
        with suppress(h11.LocalProtocolError):  # the app's own answer is under way
            await self._send_error_response(400)
        await self.send(StreamClosed(stream_id=self.stream_id))

    async def _end_refused_early(self) -> None:
        """End a stream that hypercorn's own class refused for bytes before the
        handshake's answer, as `_refuse_early_data` would have: tell the app, close.

        hypercorn's 400 may still be on its way out (its task marks the stream closed
        once it is): the connection is closed after it, not across it.
        """
        self.state = ASGIWebsocketState.HTTPCLOSED
        await self._tell_app(CloseReason.PROTOCOL_ERROR)
        with anyio.move_on_after(_REFUSAL_WRITE_SECONDS):
            while not self.closed:  # noqa: ASYNC110 - hypercorn's task sets a plain attribute
                await anyio.sleep(_REFUSAL_POLL_SECONDS)
        self.closed = True
        await self.send(StreamClosed(stream_id=self.stream_id))

    async def _tell_app(self, code: int) -> None:
        self._failed_with = int(code)
        if self.app_put is not None:
            await self.app_put({"type": "websocket.disconnect", "code": int(code)})

    async def _handle_events(self) -> None:
        # hypercorn's own loop (0.17, 0.18), but for the two failures.
        for event in self.connection.events():
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:
                    await self._fail(CloseReason.MESSAGE_TOO_BIG, _TOO_LARGE_REASON)
                    return
                if event.message_finished:
                    await self._app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, CloseConnection):
                if self.connection.state is ConnectionState.OPEN:
                    # Not a close frame from the client (that moves the state on), but
                    # wsproto's report of a frame it could not parse.
                    await self._fail(event.code, event.reason)
                    return
                if self.connection.state is ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                await self.send(StreamClosed(stream_id=self.stream_id))

    async def _app_put(self, message: dict[str, object]) -> None:
        # hypercorn's app_put is optional until the app starts, which is before any
        # WebSocket data can arrive (the app accepts first).
        if self.app_put is None:
            raise RuntimeError("a WebSocket message arrived before the app was started")
        await self.app_put(message)

    async def _fail(self, code: int, reason: str | None) -> None:
        """Send close *code*, then close the stream: the app is told *code*, and the
        TCP connection is closed once the close frame is out."""
        self._failed_with = int(code)
        await self._send_wsproto_event(CloseConnection(code=code, reason=reason))
        await self.send(EndData(stream_id=self.stream_id))  # HTTP/2: the stream ends too
        await self.send(StreamClosed(stream_id=self.stream_id))


def _split_comma_header(value: bytes) -> list[str]:
    """wsproto's ``split_comma_header``, keeping bytes beyond ASCII as Latin-1."""
    return [piece.decode("latin-1").strip() for piece in value.split(b",")]


# hypercorn's handshake parser looks the name up in its module at each call.
ws_stream.split_comma_header = _split_comma_header  # type: ignore[attr-defined]  # imported there from wsproto, not exported


async def install_closing_stream(send: Send) -> bool:
    """Make the hypercorn WebSocket stream behind *send* a `ClosingWSStream`.

    Call it before the WebSocket is accepted. Idempotent.

    On asyncio, and at times on trio, the app task starts only after hypercorn has read
    what came with the handshake: bytes after it were then refused by hypercorn's own
    stream (a 400), which neither tells the app nor closes the connection, so the app
    would wait for a disconnect, holding its connection slot, and the client would keep
    an open connection. Such a stream is ended here as `ClosingWSStream` ends it: the
    app is told 1002, and the connection is closed.

    Returns:
        Whether the connection now has a `ClosingWSStream`: False for another server,
        or for a hypercorn stream of a class other than ``WSStream`` (someone else's
        subclass is left alone).
    """
    stream = getattr(send, "__self__", None)
    if isinstance(stream, ClosingWSStream):
        return True
    if type(stream) is not WSStream:
        return False
    # The subclass adds no state of its own to set up (its one attribute has a class
    # default), so an existing stream can take it on.
    stream.__class__ = ClosingWSStream
    closing = cast("ClosingWSStream", stream)
    # The app has not answered: an answer begun (HTTP/1.1), or a stream closed without
    # one (HTTP/2, or a client gone, whose disconnect the app then hears first), is
    # hypercorn's refusal of early bytes.
    if closing._answer_begun() or (closing.closed and not closing.handshake.accepted):
        await closing._end_refused_early()
    return True
