"""The connection API: `HTTPConnection`, `WebSocket`, `WebSocketState`, `WebSocketDisconnect`.

It follows Starlette's ``starlette/websockets.py`` item by item: the same properties, the
same two state machines with the same ``RuntimeError`` messages, and the same methods.
Differences, each deliberate:

- JSON goes through msgspec. ``send_json`` writes compact JSON with non-ASCII kept, as
  ``json.dumps(data, separators=(",", ":"), ensure_ascii=False)`` does, except that
  floats in exponent form drop the ``+`` and leading zeros (``1e16``, not ``1e+16``)
  and NaN or infinity encode as ``null`` (``json.dumps`` writes ``NaN``, which is not
  JSON). ``receive_json`` raises ``msgspec.DecodeError`` on bad input.
- A scope of the wrong type raises ``ValueError`` instead of failing an ``assert``.
- `iter_frames` yields text and binary frames alike.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from service.datastructures import URL, Address, Headers, QueryParams, State, parse_cookies

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from service.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ("HTTPConnection", "WebSocket", "WebSocketDisconnect", "WebSocketState")

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


class WebSocketState(enum.Enum):
    """Where one side of a WebSocket stands."""

    CONNECTING = 0
    CONNECTED = 1
    DISCONNECTED = 2
    RESPONSE = 3


class WebSocketDisconnect(Exception):
    """Raised by the ``receive_*`` methods when the client has gone, with its close code."""

    def __init__(self, code: int = 1000, reason: str | None = None) -> None:
        self.code = code
        self.reason = reason or ""


class HTTPConnection(Mapping[str, Any]):
    """What HTTP requests and WebSocket connections share: a read-only view of the scope."""

    # Slots: a connection lives as long as its client stays. The underscored ones are
    # made the first time they are asked for.
    __slots__ = ("_base_url", "_cookies", "_headers", "_query_params", "_state", "_url", "scope")

    def __init__(self, scope: Scope, receive: Receive | None = None) -> None:
        if scope["type"] not in {"http", "websocket"}:
            raise ValueError(
                f"HTTPConnection needs an http or websocket scope, not {scope['type']!r}"
            )
        self.scope = scope

    def __getitem__(self, key: str) -> Any:
        return self.scope[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.scope)

    def __len__(self) -> int:
        return len(self.scope)

    # Connections compare by identity, as Starlette's do, not as mappings.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @property
    def app(self) -> Any:
        return self.scope["app"]

    @property
    def url(self) -> URL:
        if not hasattr(self, "_url"):
            self._url = URL(scope=self.scope)
        return self._url

    @property
    def base_url(self) -> URL:
        if not hasattr(self, "_base_url"):
            base_url_scope = dict(self.scope)
            # url_for must give app-level URLs even from inside a mounted sub-app.
            app_root_path = base_url_scope.get("app_root_path", base_url_scope.get("root_path", ""))
            path = app_root_path if app_root_path.endswith("/") else app_root_path + "/"
            base_url_scope["path"] = path
            base_url_scope["query_string"] = b""
            base_url_scope["root_path"] = app_root_path
            self._base_url = URL(scope=base_url_scope)
        return self._base_url

    @property
    def headers(self) -> Headers:
        if not hasattr(self, "_headers"):
            self._headers = Headers(self.scope["headers"])
        return self._headers

    @property
    def query_params(self) -> QueryParams:
        if not hasattr(self, "_query_params"):
            self._query_params = QueryParams(self.scope["query_string"])
        return self._query_params

    @property
    def path_params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.scope.get("path_params", {})
        return params

    @property
    def cookies(self) -> dict[str, str]:
        if not hasattr(self, "_cookies"):
            header = self.headers.get("cookie")
            self._cookies = parse_cookies(header) if header else {}
        return self._cookies

    @property
    def client(self) -> Address | None:
        host_port = self.scope.get("client")
        if host_port is not None:
            return Address(*host_port)
        return None

    @property
    def auth(self) -> Any:
        """The credentials an authentication middleware put in the scope."""
        return self._from_middleware("auth")

    @property
    def user(self) -> Any:
        """The user an authentication middleware put in the scope."""
        return self._from_middleware("user")

    def _from_middleware(self, key: str) -> Any:
        if key not in self.scope:
            raise AssertionError(
                f"AuthenticationMiddleware must be installed to access request.{key}"
            )
        return self.scope[key]

    @property
    def state(self) -> State:
        if not hasattr(self, "_state"):
            # The scope's "state" dict is shared with the lifespan's state, per ASGI.
            self.scope.setdefault("state", {})
            self._state = State(self.scope["state"])
        return self._state

    def url_for(self, name: str, /, **path_params: Any) -> URL:
        """Return the absolute URL of the route called *name*.

        Raises:
            RuntimeError: outside an app or router that provides ``url_path_for``.
        """
        url_path_provider = self.scope.get("router") or self.scope.get("app")
        if url_path_provider is None:
            raise RuntimeError(
                "The `url_for` method can only be used inside a Starlette application "
                "or with a router."
            )
        url_path = url_path_provider.url_path_for(name, **path_params)
        absolute: URL = url_path.make_absolute_url(base_url=self.base_url)
        return absolute


class WebSocket(HTTPConnection):
    """One WebSocket connection, with Starlette's state machine and methods."""

    __slots__ = ("_receive", "_send", "application_state", "client_state")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(scope)
        if scope["type"] != "websocket":
            raise ValueError(f"WebSocket needs a websocket scope, not {scope['type']!r}")
        self._receive = receive
        self._send = send
        self.client_state = WebSocketState.CONNECTING
        self.application_state = WebSocketState.CONNECTING

    async def receive(self) -> Message:
        """Receive ASGI websocket messages, ensuring valid state transitions."""
        if self.client_state == WebSocketState.CONNECTING:
            message = await self._receive()
            message_type = message["type"]
            if message_type != "websocket.connect":
                raise RuntimeError(
                    f'Expected ASGI message "websocket.connect", but got {message_type!r}'
                )
            self.client_state = WebSocketState.CONNECTED
            return message
        elif self.client_state == WebSocketState.CONNECTED:
            return self._received(await self._receive())
        else:
            raise RuntimeError('Cannot call "receive" once a disconnect message has been received.')

    def _received(self, message: Message) -> Message:
        """Check *message*, received while connected, and note a disconnect."""
        message_type = message["type"]
        if message_type not in {"websocket.receive", "websocket.disconnect"}:
            raise RuntimeError(
                'Expected ASGI message "websocket.receive" or "websocket.disconnect", '
                f"but got {message_type!r}"
            )
        if message_type == "websocket.disconnect":
            self.client_state = WebSocketState.DISCONNECTED
        return message

    async def send(self, message: Message) -> None:
        """Send ASGI websocket messages, ensuring valid state transitions."""
        if self.application_state == WebSocketState.CONNECTING:
            message_type = message["type"]
            if message_type not in {
                "websocket.accept",
                "websocket.close",
                "websocket.http.response.start",
            }:
                raise RuntimeError(
                    'Expected ASGI message "websocket.accept", "websocket.close" or '
                    f'"websocket.http.response.start", but got {message_type!r}'
                )
            if message_type == "websocket.close":
                self.application_state = WebSocketState.DISCONNECTED
            elif message_type == "websocket.http.response.start":
                self.application_state = WebSocketState.RESPONSE
            else:
                self.application_state = WebSocketState.CONNECTED
            await self._send(message)
        elif self.application_state == WebSocketState.CONNECTED:
            message_type = message["type"]
            if message_type not in {"websocket.send", "websocket.close"}:
                raise RuntimeError(
                    'Expected ASGI message "websocket.send" or "websocket.close", '
                    f"but got {message_type!r}"
                )
            if message_type == "websocket.close":
                self.application_state = WebSocketState.DISCONNECTED
            try:
                await self._send(message)
            except OSError:
                self.application_state = WebSocketState.DISCONNECTED
                raise WebSocketDisconnect(code=1006) from None
        elif self.application_state == WebSocketState.RESPONSE:
            message_type = message["type"]
            if message_type != "websocket.http.response.body":
                raise RuntimeError(
                    'Expected ASGI message "websocket.http.response.body", '
                    f"but got {message_type!r}"
                )
            if not message.get("more_body", False):
                self.application_state = WebSocketState.DISCONNECTED
            await self._send(message)
        else:
            raise RuntimeError('Cannot call "send" once a close message has been sent.')

    async def accept(
        self,
        subprotocol: str | None = None,
        headers: Iterable[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Accept the handshake, first receiving the connect message if not yet done."""
        headers = headers or []
        if self.client_state == WebSocketState.CONNECTING:
            # If we haven't yet seen the 'connect' message, then wait for it first.
            await self.receive()
        await self.send(
            {"type": "websocket.accept", "subprotocol": subprotocol, "headers": headers}
        )

    def _raise_on_disconnect(self, message: Message) -> None:
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message["code"], message.get("reason"))

    def _require_connected(self) -> None:
        if self.application_state != WebSocketState.CONNECTED:
            raise RuntimeError('WebSocket is not connected. Need to call "accept" first.')

    async def receive_text(self) -> str:
        self._require_connected()
        message = await self.receive()
        self._raise_on_disconnect(message)
        text: str = message["text"]
        return text

    async def receive_bytes(self) -> bytes:
        self._require_connected()
        message = await self.receive()
        self._raise_on_disconnect(message)
        data: bytes = message["bytes"]
        return data

    async def receive_json(self, mode: str = "text") -> Any:
        if mode not in {"text", "binary"}:
            raise RuntimeError('The "mode" argument should be "text" or "binary".')
        self._require_connected()
        message = await self.receive()
        self._raise_on_disconnect(message)
        if mode == "text":
            return _json_decoder.decode(message["text"])
        return _json_decoder.decode(message["bytes"])

    async def receive_frame(self) -> str | bytes:
        """Receive the next data frame, text (as str) or binary (as bytes)."""
        return self.frame_of(await self.next_message())

    def next_message(self) -> Awaitable[Message]:
        """The next message from the server, for `frame_of`: `receive_frame` in two halves,
        so that a loop awaiting this holds no coroutine of this class while the client is
        quiet (the server's own receive is returned as it is)."""
        self._require_connected()
        if self.client_state == WebSocketState.CONNECTED:
            return self._receive()
        return self.receive()  # which says why it cannot

    def frame_of(self, message: Message) -> str | bytes:
        """The data frame in *message*, from `next_message`: text (as str) or binary (as
        bytes).

        Raises:
            WebSocketDisconnect: the message is the client's disconnect.
        """
        self._raise_on_disconnect(self._received(message))
        text: str | None = message.get("text")
        if text is not None:
            return text
        data: bytes = message["bytes"]
        return data

    async def iter_text(self) -> AsyncIterator[str]:
        try:
            while True:
                yield await self.receive_text()
        except WebSocketDisconnect:
            pass

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield await self.receive_bytes()
        except WebSocketDisconnect:
            pass

    async def iter_json(self) -> AsyncIterator[Any]:
        try:
            while True:
                yield await self.receive_json()
        except WebSocketDisconnect:
            pass

    async def iter_frames(self) -> AsyncGenerator[str | bytes, None]:
        """Yield every data frame, text or binary, until the client disconnects."""
        try:
            while True:
                yield await self.receive_frame()
        except WebSocketDisconnect:
            pass

    async def send_text(self, data: str) -> None:
        await self.send({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        await self.send({"type": "websocket.send", "bytes": data})

    async def send_json(self, data: Any, mode: str = "text") -> None:
        if mode not in {"text", "binary"}:
            raise RuntimeError('The "mode" argument should be "text" or "binary".')
        encoded = _json_encoder.encode(data)
        if mode == "text":
            await self.send({"type": "websocket.send", "text": encoded.decode()})
        else:
            await self.send({"type": "websocket.send", "bytes": encoded})

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.send({"type": "websocket.close", "code": code, "reason": reason or ""})

    async def send_denial_response(self, response: ASGIApp) -> None:
        """Refuse the handshake with an HTTP response instead of a WebSocket.

        *response* is any ASGI response callable: `service.responses.Response`, or a
        Starlette or FastAPI ``Response``, ``StreamingResponse`` or ``FileResponse``.
        It is called with this connection's scope, receive and send.

        Raises:
            RuntimeError: if the server lacks the ``websocket.http.response`` extension.
        """
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            raise RuntimeError(
                "The server doesn't support the Websocket Denial Response extension."
            )
        await response(self.scope, self.receive, self.send)
