"""service.websocket against the reference (Starlette's WebSocket), item by item."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from service.app import Clarion, NoMatchFound
from service.datastructures import URL, Address, Headers, QueryParams
from service.responses import Response
from service.settings import Settings
from service.websocket import HTTPConnection, WebSocket, WebSocketDisconnect, WebSocketState
from tests.support.asgi import http_scope

if TYPE_CHECKING:
    from service.types import Message, Receive, Scope, Send

CONNECT = {"type": "websocket.connect"}
RECEIVING = ["receive_text", "receive_bytes", "receive_json", "receive_frame"]
DISCONNECT = {"type": "websocket.disconnect", "code": 1001, "reason": "bye"}


def exact(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern for exactly *message*."""
    return f"^{re.escape(message)}$"


def text(data: str) -> Message:
    return {"type": "websocket.receive", "text": data}


def binary(data: bytes) -> Message:
    return {"type": "websocket.receive", "bytes": data}


class Transport:
    """The server side of a connection: scripted incoming messages, recorded sends."""

    def __init__(self, incoming: list[Message], fail_send: bool = False) -> None:
        self.incoming = list(incoming)
        self.sent: list[Message] = []
        self.fail_send = fail_send

    async def receive(self) -> Message:
        return self.incoming.pop(0)

    async def send(self, message: Message) -> None:
        if self.fail_send:
            raise OSError("connection reset")
        self.sent.append(message)


def states(ws: WebSocket) -> tuple[WebSocketState, WebSocketState]:
    """Read both states afresh (mypy would keep an earlier comparison's narrowing)."""
    return ws.client_state, ws.application_state


def ws_scope(**changes: Any) -> Scope:
    scope = http_scope("GET", "/ws") | {
        "type": "websocket",
        "scheme": "ws",
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
    }
    scope.update(changes)
    return scope


def make(*incoming: Message, fail_send: bool = False, **scope: Any) -> tuple[WebSocket, Transport]:
    transport = Transport(list(incoming), fail_send)
    return WebSocket(ws_scope(**scope), transport.receive, transport.send), transport


async def connected(*incoming: Message, **scope: Any) -> tuple[WebSocket, Transport]:
    ws, transport = make(CONNECT, *incoming, **scope)
    await ws.accept()
    return ws, transport


# States and exceptions -------------------------------------------------------------------


def test_state_values() -> None:
    assert [(state.name, state.value) for state in WebSocketState] == [
        ("CONNECTING", 0),
        ("CONNECTED", 1),
        ("DISCONNECTED", 2),
        ("RESPONSE", 3),
    ]


def test_disconnect_defaults_and_values() -> None:
    default = WebSocketDisconnect()
    assert (default.code, default.reason) == (1000, "")
    given = WebSocketDisconnect(4000, "slow")
    assert (given.code, given.reason) == (4000, "slow")
    assert isinstance(given, Exception)


def test_new_websocket_is_connecting_on_both_sides() -> None:
    ws, _ = make()
    assert ws.client_state is WebSocketState.CONNECTING
    assert ws.application_state is WebSocketState.CONNECTING


def test_websocket_refuses_an_http_scope() -> None:
    transport = Transport([])
    with pytest.raises(ValueError, match="websocket scope"):
        WebSocket(http_scope("GET", "/"), transport.receive, transport.send)


def test_connection_refuses_a_lifespan_scope() -> None:
    with pytest.raises(ValueError, match="http or websocket scope"):
        HTTPConnection({"type": "lifespan"})


# HTTPConnection properties ---------------------------------------------------------------


def test_url_uses_the_host_header_and_query() -> None:
    ws, _ = make(headers=[(b"host", b"example.org:8080")], query_string=b"a=1&b=2")
    assert ws.url == URL("ws://example.org:8080/ws?a=1&b=2")
    assert (ws.url.scheme, ws.url.hostname, ws.url.port, ws.url.path, ws.url.query) == (
        "ws",
        "example.org",
        8080,
        "/ws",
        "a=1&b=2",
    )


@pytest.mark.parametrize(
    ("scheme", "server", "expected"),
    [
        ("ws", ("127.0.0.1", 80), "ws://127.0.0.1/ws"),
        ("wss", ("127.0.0.1", 443), "wss://127.0.0.1/ws"),
        ("ws", ("127.0.0.1", 8000), "ws://127.0.0.1:8000/ws"),
        ("ws", None, "/ws"),
    ],
    ids=["default-port", "default-secure-port", "other-port", "no-server"],
)
def test_url_without_host_header_uses_the_server(
    scheme: str, server: tuple[str, int] | None, expected: str
) -> None:
    ws, _ = make(scheme=scheme, server=server)
    assert str(ws.url) == expected


def test_base_url_is_the_root_without_query() -> None:
    ws, _ = make(headers=[(b"host", b"h")], query_string=b"x=1", root_path="/app")
    assert str(ws.base_url) == "ws://h/app/"
    ws, _ = make(headers=[(b"host", b"h")])
    assert str(ws.base_url) == "ws://h/"


def test_headers_are_case_insensitive_and_keep_repeats() -> None:
    raw = [(b"x-one", b"1"), (b"X-Two", b"2"), (b"x-one", b"3")]
    ws, _ = make(headers=raw)
    assert isinstance(ws.headers, Headers)
    assert ws.headers["X-ONE"] == "1"
    assert ws.headers.getlist("x-one") == ["1", "3"]
    assert "x-two" in ws.headers
    assert "x-three" not in ws.headers
    assert ws.headers.get("x-three") is None
    assert ws.headers.raw == raw
    assert list(ws.headers.keys()) == ["x-one", "X-Two", "x-one"]
    assert len(ws.headers) == 3
    assert Headers(list(reversed(raw))) == ws.headers


def test_query_params_last_value_wins_and_getlist_keeps_all() -> None:
    ws, _ = make(query_string=b"a=1&b=&a=2")
    assert isinstance(ws.query_params, QueryParams)
    assert ws.query_params["a"] == "2"
    assert ws.query_params["b"] == ""
    assert ws.query_params.getlist("a") == ["1", "2"]
    assert ws.query_params.multi_items() == [("a", "1"), ("b", ""), ("a", "2")]
    assert dict(ws.query_params) == {"a": "2", "b": ""}


def test_url_components_replace_and_repr() -> None:
    url = URL("ws://example.org:8000/ws?a=1#top")
    assert (url.netloc, url.fragment, url.is_secure) == ("example.org:8000", "top", False)
    secure = url.replace(scheme="wss", path="/other")
    assert secure == URL("wss://example.org:8000/other?a=1#top")
    assert secure.is_secure
    assert repr(url) == "URL('ws://example.org:8000/ws?a=1#top')"
    # Equal URLs hash alike: a URL can key a dict (Starlette's cannot: it is unhashable).
    assert {URL("ws://example.org/ws"): "route"}[URL("ws://example.org/ws")] == "route"


def test_url_refuses_both_a_string_and_a_scope() -> None:
    with pytest.raises(ValueError, match=exact('Cannot set both "url" and "scope".')):
        URL("ws://example.org/ws", scope=ws_scope())


def test_headers_compare_and_contain_only_their_own_kind() -> None:
    headers = Headers([(b"x-one", b"1")])
    key: object = 1
    assert key not in headers  # a Mapping answers False for a key of another type
    assert headers != {"x-one": "1"}
    assert headers != Headers([(b"x-one", b"2")])
    assert repr(headers) == "Headers({'x-one': '1'})"


def test_query_params_count_keys_once_and_show_every_pair() -> None:
    params = QueryParams(b"a=1&a=2&b=")
    assert len(params) == 2
    assert repr(params) == "QueryParams([('a', '1'), ('a', '2'), ('b', '')])"


def test_cookies_skip_empty_chunks() -> None:
    ws, _ = make(headers=[(b"cookie", b"a=1; ; b=2;")])
    assert ws.cookies == {"a": "1", "b": "2"}


def test_path_params_default_to_empty() -> None:
    assert make()[0].path_params == {}
    assert make(path_params={"room": "7"})[0].path_params == {"room": "7"}


def test_cookies_are_parsed_like_a_browser_sends_them() -> None:
    ws, _ = make(headers=[(b"cookie", b'session=abc; theme="dark"; lonely; empty=')])
    assert ws.cookies == {"session": "abc", "theme": "dark", "": "lonely", "empty": ""}
    assert make()[0].cookies == {}


def test_client_is_an_address_or_none() -> None:
    client = make(client=("127.0.0.1", 5000))[0].client
    assert client == Address("127.0.0.1", 5000)
    assert client is not None
    assert (client.host, client.port) == ("127.0.0.1", 5000)
    assert make(client=None)[0].client is None


def test_state_is_the_scope_state_dict() -> None:
    shared: dict[str, Any] = {"db": "handle"}
    ws, _ = make(state=shared)
    assert ws.state.db == "handle"
    ws.state.user = "ada"
    assert shared["user"] == "ada"
    del ws.state.user
    assert "user" not in shared
    with pytest.raises(AttributeError, match="'State' object has no attribute 'missing'"):
        _ = ws.state.missing


def test_state_items_are_its_attributes() -> None:
    # Lifespan state is often used as a mapping: state["client"] as well as state.client.
    shared: dict[str, Any] = {"count": 1}
    ws, _ = make(state=shared)
    assert ws.state["count"] == 1
    ws.state["count"] += 1
    assert (ws.state.count, shared["count"]) == (2, 2)
    assert "count" in ws.state
    del ws.state["count"]
    assert "count" not in ws.state
    with pytest.raises(KeyError):
        _ = ws.state["count"]


@pytest.mark.parametrize("name", ["user", "auth"])
def test_user_and_auth_come_from_the_scope_or_name_the_missing_middleware(name: str) -> None:
    marker = object()
    ws, _ = make()
    ws.scope[name] = marker
    assert getattr(ws, name) is marker
    message = f"AuthenticationMiddleware must be installed to access request.{name}"
    with pytest.raises(AssertionError, match=exact(message)):
        getattr(make()[0], name)


def test_state_is_created_when_the_scope_has_none() -> None:
    ws, _ = make()
    ws.scope.pop("state", None)
    ws.state.value = 1
    assert ws.scope["state"] == {"value": 1}


def test_app_and_mapping_access_read_the_scope() -> None:
    marker = object()
    ws, _ = make(app=marker)
    assert ws.app is marker
    assert ws["type"] == "websocket"
    assert "path" in list(ws)
    assert len(ws) == len(ws.scope)


def test_connections_compare_by_identity() -> None:
    first, _ = make()
    second = WebSocket(first.scope, first._receive, first._send)
    assert first != second
    assert first == first
    assert len({first, second}) == 2


def test_url_for_builds_absolute_urls_from_the_app() -> None:
    app = Clarion(Settings())
    ws, _ = make(app=app, headers=[(b"host", b"example.org")])
    assert ws.url_for("websocket") == URL("ws://example.org/ws")
    assert ws.url_for("publish") == URL("http://example.org/api/publish")
    secure, _ = make(app=app, scheme="wss", headers=[(b"host", b"example.org")])
    assert str(secure.url_for("websocket")) == "wss://example.org/ws"
    assert str(secure.url_for("health")) == "https://example.org/health"
    with pytest.raises(NoMatchFound, match='No route exists for name "nope"'):
        ws.url_for("nope")


def test_url_for_needs_an_app_or_router() -> None:
    ws, _ = make()
    with pytest.raises(
        RuntimeError,
        match=exact(
            "The `url_for` method can only be used inside a Starlette application or with a router."
        ),
    ):
        ws.url_for("websocket")


# receive ---------------------------------------------------------------------------------


async def test_receive_first_takes_the_connect_message() -> None:
    ws, _ = make(CONNECT)
    assert await ws.receive() == CONNECT
    assert ws.client_state is WebSocketState.CONNECTED


async def test_receive_while_connecting_rejects_another_message() -> None:
    ws, _ = make(text("early"))
    with pytest.raises(
        RuntimeError,
        match=exact("Expected ASGI message \"websocket.connect\", but got 'websocket.receive'"),
    ):
        await ws.receive()


async def test_receive_when_connected_returns_data_and_disconnect() -> None:
    ws, _ = make(CONNECT, text("hi"), DISCONNECT)
    await ws.receive()
    assert await ws.receive() == text("hi")
    assert ws.client_state is WebSocketState.CONNECTED
    assert await ws.receive() == DISCONNECT
    assert states(ws)[0] is WebSocketState.DISCONNECTED


async def test_receive_when_connected_rejects_an_unexpected_type() -> None:
    ws, _ = make(CONNECT, {"type": "websocket.connect"})
    await ws.receive()
    with pytest.raises(
        RuntimeError,
        match=exact(
            'Expected ASGI message "websocket.receive" or "websocket.disconnect", '
            "but got 'websocket.connect'"
        ),
    ):
        await ws.receive()


async def test_receive_after_disconnect_is_an_error() -> None:
    ws, _ = make(CONNECT, DISCONNECT)
    await ws.receive()
    await ws.receive()
    with pytest.raises(
        RuntimeError,
        match=exact('Cannot call "receive" once a disconnect message has been received.'),
    ):
        await ws.receive()


# send ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "state"),
    [
        ({"type": "websocket.accept"}, WebSocketState.CONNECTED),
        ({"type": "websocket.close", "code": 1000}, WebSocketState.DISCONNECTED),
        ({"type": "websocket.http.response.start", "status": 403}, WebSocketState.RESPONSE),
    ],
    ids=["accept", "close", "response-start"],
)
async def test_send_while_connecting(message: Message, state: WebSocketState) -> None:
    ws, transport = make()
    await ws.send(message)
    assert ws.application_state is state
    assert transport.sent == [message]


async def test_send_while_connecting_rejects_data() -> None:
    ws, transport = make()
    with pytest.raises(
        RuntimeError,
        match=exact(
            'Expected ASGI message "websocket.accept", "websocket.close" or '
            "\"websocket.http.response.start\", but got 'websocket.send'"
        ),
    ):
        await ws.send({"type": "websocket.send", "text": "x"})
    assert transport.sent == []
    assert ws.application_state is WebSocketState.CONNECTING


async def test_send_when_connected_sends_data_and_close() -> None:
    ws, transport = await connected()
    await ws.send({"type": "websocket.send", "text": "x"})
    assert ws.application_state is WebSocketState.CONNECTED
    await ws.send({"type": "websocket.close", "code": 1000})
    assert states(ws)[1] is WebSocketState.DISCONNECTED
    assert [message["type"] for message in transport.sent] == [
        "websocket.accept",
        "websocket.send",
        "websocket.close",
    ]


async def test_send_when_connected_rejects_an_unexpected_type() -> None:
    ws, _ = await connected()
    with pytest.raises(
        RuntimeError,
        match=exact(
            'Expected ASGI message "websocket.send" or "websocket.close", '
            "but got 'websocket.accept'"
        ),
    ):
        await ws.send({"type": "websocket.accept"})


async def test_send_failing_with_oserror_is_a_1006_disconnect() -> None:
    ws, transport = await connected()
    transport.fail_send = True
    with pytest.raises(WebSocketDisconnect) as caught:
        await ws.send_text("x")
    assert caught.value.code == 1006
    assert ws.application_state is WebSocketState.DISCONNECTED


async def test_response_body_keeps_response_state_until_the_last_chunk() -> None:
    ws, transport = make()
    await ws.send({"type": "websocket.http.response.start", "status": 403, "headers": []})
    await ws.send({"type": "websocket.http.response.body", "body": b"a", "more_body": True})
    assert ws.application_state is WebSocketState.RESPONSE
    await ws.send({"type": "websocket.http.response.body", "body": b"b"})
    assert states(ws)[1] is WebSocketState.DISCONNECTED
    assert len(transport.sent) == 3


async def test_response_state_rejects_anything_but_body() -> None:
    ws, _ = make()
    await ws.send({"type": "websocket.http.response.start", "status": 403})
    with pytest.raises(
        RuntimeError,
        match=exact(
            "Expected ASGI message \"websocket.http.response.body\", but got 'websocket.send'"
        ),
    ):
        await ws.send({"type": "websocket.send", "text": "x"})


async def test_send_after_close_is_an_error() -> None:
    ws, _ = await connected()
    await ws.close()
    with pytest.raises(
        RuntimeError, match=exact('Cannot call "send" once a close message has been sent.')
    ):
        await ws.send_text("late")


# accept and close --------------------------------------------------------------------------


async def test_accept_receives_connect_then_sends_accept() -> None:
    ws, transport = make(CONNECT)
    await ws.accept(subprotocol="clarion.v1", headers=[(b"x-node", b"a")])
    assert ws.client_state is WebSocketState.CONNECTED
    assert ws.application_state is WebSocketState.CONNECTED
    assert transport.sent == [
        {"type": "websocket.accept", "subprotocol": "clarion.v1", "headers": [(b"x-node", b"a")]}
    ]


async def test_accept_after_receiving_connect_does_not_receive_again() -> None:
    ws, transport = make(CONNECT)
    await ws.receive()
    await ws.accept()
    assert transport.incoming == []
    assert transport.sent == [{"type": "websocket.accept", "subprotocol": None, "headers": []}]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), {"type": "websocket.close", "code": 1000, "reason": ""}),
        ((4000, "slow"), {"type": "websocket.close", "code": 4000, "reason": "slow"}),
    ],
    ids=["defaults", "code-and-reason"],
)
async def test_close_sends_code_and_reason(args: tuple[Any, ...], expected: Message) -> None:
    ws, transport = await connected()
    await ws.close(*args)
    assert transport.sent[-1] == expected
    assert ws.application_state is WebSocketState.DISCONNECTED


async def test_close_before_accept_refuses_the_handshake() -> None:
    ws, transport = make()
    await ws.close(1008)
    assert transport.sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    assert ws.application_state is WebSocketState.DISCONNECTED


# receive_* and iter_* ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["receive_text", "receive_bytes", "receive_json", "receive_frame"]
)
async def test_receiving_before_accept_is_an_error(method: str) -> None:
    ws, _ = make(CONNECT)
    with pytest.raises(
        RuntimeError, match=exact('WebSocket is not connected. Need to call "accept" first.')
    ):
        await getattr(ws, method)()


async def test_receive_text_bytes_and_frame() -> None:
    ws, _ = await connected(text("hi"), binary(b"\x00\x01"), text("t"), binary(b"b"))
    assert await ws.receive_text() == "hi"
    assert await ws.receive_bytes() == b"\x00\x01"
    assert await ws.receive_frame() == "t"
    assert await ws.receive_frame() == b"b"


@pytest.mark.parametrize(
    "method", ["receive_text", "receive_bytes", "receive_json", "receive_frame"]
)
async def test_receiving_a_disconnect_raises_with_its_code(method: str) -> None:
    ws, _ = await connected(DISCONNECT)
    with pytest.raises(WebSocketDisconnect) as caught:
        await getattr(ws, method)()
    assert (caught.value.code, caught.value.reason) == (1001, "bye")


async def test_receive_json_in_text_and_binary_mode() -> None:
    ws, _ = await connected(text('{"a": [1, "é"]}'), binary(b'{"b": null}'))
    assert await ws.receive_json() == {"a": [1, "é"]}
    assert await ws.receive_json(mode="binary") == {"b": None}


async def test_receive_json_rejects_bad_json_and_bad_mode() -> None:
    ws, _ = await connected(text("{nope"))
    with pytest.raises(msgspec.DecodeError):
        await ws.receive_json()
    with pytest.raises(
        RuntimeError, match=exact('The "mode" argument should be "text" or "binary".')
    ):
        await ws.receive_json(mode="xml")


async def test_iter_loops_end_quietly_on_disconnect() -> None:
    ws, _ = await connected(text("a"), text("b"), DISCONNECT)
    assert [item async for item in ws.iter_text()] == ["a", "b"]
    ws, _ = await connected(binary(b"a"), DISCONNECT)
    assert [item async for item in ws.iter_bytes()] == [b"a"]
    ws, _ = await connected(text("[1]"), text('{"x":2}'), DISCONNECT)
    assert [item async for item in ws.iter_json()] == [[1], {"x": 2}]
    ws, _ = await connected(text("a"), binary(b"b"), DISCONNECT)
    assert [item async for item in ws.iter_frames()] == ["a", b"b"]


# send_* ------------------------------------------------------------------------------------


async def test_send_text_and_bytes() -> None:
    ws, transport = await connected()
    await ws.send_text("hé")
    await ws.send_bytes(b"\xff")
    assert transport.sent[1:] == [
        {"type": "websocket.send", "text": "hé"},
        {"type": "websocket.send", "bytes": b"\xff"},
    ]


SAME_AS_JSON_DUMPS = [
    {"a": 1, "b": [True, False, None]},
    "non-ASCII stays: é ü 漢字 🎉",
    'escapes: "quote" \\ \n \t \u0000 \u001f',
    [0.1, -0.0, 2.5, 1234567.125, 10**20],
    {"nested": {"list": [{"k": "v"}], "empty": {}}},
    {1: "int keys become strings"},
    "",
]


@pytest.mark.parametrize("data", SAME_AS_JSON_DUMPS, ids=range(len(SAME_AS_JSON_DUMPS)))
async def test_send_json_is_byte_compatible_with_the_reference(data: Any) -> None:
    ws, transport = await connected()
    await ws.send_json(data)
    await ws.send_json(data, mode="binary")
    reference = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    assert transport.sent[1] == {"type": "websocket.send", "text": reference}
    assert transport.sent[2] == {"type": "websocket.send", "bytes": reference.encode("utf-8")}


async def test_send_json_documented_differences_from_json_dumps() -> None:
    ws, transport = await connected()
    await ws.send_json([1e16, 1.5e-7, float("nan"), float("inf")])
    # json.dumps writes [1e+16,1.5e-07,NaN,Infinity]: the same numbers, but NaN and
    # Infinity are not JSON, so msgspec writes null.
    assert transport.sent[1]["text"] == "[1e16,1.5e-7,null,null]"


async def test_send_json_rejects_a_bad_mode() -> None:
    ws, transport = await connected()
    with pytest.raises(
        RuntimeError, match=exact('The "mode" argument should be "text" or "binary".')
    ):
        await ws.send_json({}, mode="xml")
    assert len(transport.sent) == 1


# Denial response ---------------------------------------------------------------------------


async def test_denial_response_sends_status_body_and_headers() -> None:
    ws, transport = make()
    headers = [(b"content-type", b"application/json")]
    await ws.send_denial_response(Response(403, b'{"no":1}', headers))
    assert transport.sent == [
        {
            "type": "websocket.http.response.start",
            "status": 403,
            "headers": [(b"content-length", b"8"), (b"content-type", b"application/json")],
        },
        {"type": "websocket.http.response.body", "body": b'{"no":1}'},
    ]
    assert ws.application_state is WebSocketState.DISCONNECTED


async def test_denial_response_takes_any_asgi_response() -> None:
    # As a Starlette StreamingResponse would: the body in parts, the prefix from the scope.
    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        prefix = "websocket." if scope["type"] == "websocket" else ""
        start = {"type": f"{prefix}http.response.start", "status": 401, "headers": []}
        await send(start)
        for part in (b"go ", b"away"):
            await send({"type": f"{prefix}http.response.body", "body": part, "more_body": True})
        await send({"type": f"{prefix}http.response.body", "body": b""})

    ws, transport = make()
    await ws.send_denial_response(streaming)
    assert [message["type"] for message in transport.sent] == [
        "websocket.http.response.start",
        *["websocket.http.response.body"] * 3,
    ]
    assert b"".join(message.get("body", b"") for message in transport.sent) == b"go away"
    assert ws.application_state is WebSocketState.DISCONNECTED


async def test_denial_response_needs_the_server_extension() -> None:
    ws, transport = make(extensions={})
    with pytest.raises(
        RuntimeError,
        match=exact("The server doesn't support the Websocket Denial Response extension."),
    ):
        await ws.send_denial_response(Response(403))
    assert transport.sent == []
