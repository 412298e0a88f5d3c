"""HTTP requests driven in memory: a whole body before any answer, the body's deadline,
connection slots, hostile bodies, and what an open API shows."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from channels.config import ChannelRule
from service.settings import AuthSettings, ServerSettings, Settings
from tests.support.asgi import http_request, http_scope, running_app, websocket
from tests.support.auth import SECRET, token

if TYPE_CHECKING:
    from service.app import Clarion
    from service.types import Message

KEYED = Settings(server=ServerSettings(api_keys=["k1"]))
KEY = [(b"authorization", b"Bearer k1")]


class Exchange:
    """One HTTP request whose body arrives in *chunks*, the last one when *finish* is set.

    ``log`` records each body chunk handed to the app and each response message, in order.
    """

    def __init__(self, chunks: list[bytes], finish: anyio.Event | None = None) -> None:
        self._chunks = list(chunks)
        self._finish = finish
        self.log: list[str] = []
        self.sent: list[Message] = []
        self.answered = anyio.Event()

    async def receive(self) -> Message:
        if len(self._chunks) == 1 and self._finish is not None:
            await self._finish.wait()
        if not self._chunks:
            await anyio.sleep_forever()
        chunk = self._chunks.pop(0)
        self.log.append(f"body {len(self._chunks)} left")
        return {"type": "http.request", "body": chunk, "more_body": bool(self._chunks)}

    async def send(self, message: Message) -> None:
        self.log.append(message["type"])
        self.sent.append(message)
        if message["type"] == "http.response.body":
            self.answered.set()

    async def run(
        self,
        app: Clarion,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]] | None = None,
        http_version: str = "1.1",
    ) -> None:
        """Send the request to *app*; its body is announced as HTTP/1.1 would (chunked)."""
        framing = [(b"transfer-encoding", b"chunked")] if http_version != "2" else []
        scope = http_scope(method, path, [*(headers or []), *framing])
        await app({**scope, "http_version": http_version}, self.receive, self.send)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {key.decode(): value.decode() for key, value in self.sent[0]["headers"]}

    @property
    def body(self) -> Any:
        return msgspec.json.decode(self.sent[1]["body"])


@pytest.mark.parametrize(
    ("config", "method", "path", "status"),
    [
        (KEYED, "POST", "/api/publish", 401),
        (KEYED, "POST", "/nowhere", 404),
        (KEYED, "POST", "/health", 405),
        (Settings(), "POST", "/api/publish", 200),
    ],
    ids=["wrong-key", "no-route", "wrong-method", "accepted"],
)
async def test_every_answer_waits_for_the_whole_body(
    config: Settings, method: str, path: str, status: int
) -> None:
    # Answering before the body ends would leave the rest of it on a keep-alive
    # connection, to be taken for the next request (or to have the connection dropped).
    chunks = [b'{"channel":"c",', b'"data":1}']
    async with running_app(config) as app:
        exchange = Exchange(chunks)
        await exchange.run(app, method, path, [(b"authorization", b"Bearer wrong")])
    assert exchange.log == [
        "body 1 left",
        "body 0 left",
        "http.response.start",
        "http.response.body",
    ]
    assert exchange.status == status
    assert "connection" not in exchange.headers


@pytest.mark.parametrize("http_version", ["1.1", "2"])
async def test_a_body_that_never_ends_is_answered_408_and_the_connection_closed(
    http_version: str,
) -> None:
    # HTTP/2 sends a body without announcing it in a header: it gets the deadline too.
    config = Settings(server=ServerSettings(handshake_timeout_seconds=0.2))
    async with running_app(config) as app:
        exchange = Exchange([b'{"chan', b'nel":"c","data":1}'], finish=anyio.Event())
        with anyio.fail_after(5):
            await exchange.run(app, "POST", "/api/publish", http_version=http_version)
    assert (exchange.status, exchange.body["code"]) == (408, 115)
    assert exchange.headers["connection"] == "close"
    assert "0.2s" in exchange.body["message"]


async def test_a_body_over_the_limit_is_answered_413_and_the_connection_closed() -> None:
    config = Settings(server=ServerSettings(max_request_bytes=10))
    async with running_app(config) as app:
        exchange = Exchange([b"x" * 8, b"x" * 8, b"never read"])
        await exchange.run(app, "POST", "/api/publish")
    assert (exchange.status, exchange.body["code"]) == (413, 103)
    assert exchange.headers["connection"] == "close"
    assert exchange.log[:2] == ["body 2 left", "body 1 left"]


async def test_requests_in_progress_hold_connection_slots() -> None:
    config = Settings(server=ServerSettings(max_connections=2, api_keys=["k1"]))
    async with running_app(config) as app, anyio.create_task_group() as tg:
        finish = anyio.Event()
        slow = [Exchange([b'{"channel":"c",', b'"data":1}'], finish) for _ in range(2)]
        for exchange in slow:
            tg.start_soon(exchange.run, app, "POST", "/api/publish", KEY)
        await anyio.wait_all_tasks_blocked()
        # Two bodies on their way fill the node: a WebSocket and a keyless call are refused.
        async with websocket(app, accept=False) as client:
            denial = await client.handshake()
        assert (denial["type"], denial["status"]) == ("websocket.http.response.start", 503)
        status, _, body = await http_request(app, "GET", "/api/stats")
        assert (status, body["code"]) == (503, 112)
        # Probes and the backend (a valid API key) are still served.
        assert (await http_request(app, "GET", "/health"))[0] == 200
        assert (await http_request(app, "GET", "/api/stats", headers=KEY))[0] == 200
        finish.set()
        for exchange in slow:
            await exchange.answered.wait()
        assert [exchange.status for exchange in slow] == [200, 200]
        async with websocket(app) as client:
            assert await client.request({"type": "ping", "id": 1}) == {"type": "reply", "id": 1}


async def test_a_probe_that_sends_a_body_holds_a_slot_like_any_request() -> None:
    # Probes are served on a full node, but a body could arrive a byte at a time: a
    # probe that announces one must not pile up past the limit.
    config = Settings(server=ServerSettings(max_connections=2))
    async with running_app(config) as app, anyio.create_task_group() as tg:
        finish = anyio.Event()
        slow = [Exchange([b"x", b"y"], finish) for _ in range(2)]
        for exchange, path in zip(slow, ["/health", "/metrics"], strict=True):
            tg.start_soon(exchange.run, app, "GET", path)
        await anyio.wait_all_tasks_blocked()
        async with websocket(app, accept=False) as client:
            denial = await client.handshake()
        assert (denial["type"], denial["status"]) == ("websocket.http.response.start", 503)
        third = Exchange([b"x", b"y"])
        await third.run(app, "GET", "/ready")
        assert (third.status, third.body["code"]) == (503, 112)
        assert (await http_request(app, "GET", "/health"))[0] == 200
        finish.set()
        for exchange in slow:
            await exchange.answered.wait()
        assert [exchange.status for exchange in slow] == [200, 200]


async def test_requests_in_progress_count_towards_the_per_address_limit() -> None:
    config = Settings(server=ServerSettings(max_connections_per_address=1))
    async with running_app(config) as app, anyio.create_task_group() as tg:
        finish = anyio.Event()
        exchange = Exchange([b'{"channel":"c",', b'"data":1}'], finish)
        tg.start_soon(exchange.run, app, "POST", "/api/publish")
        await anyio.wait_all_tasks_blocked()
        status, _, body = await http_request(
            app, "POST", "/api/publish", b'{"channel":"c","data":2}'
        )
        assert (status, body["code"]) == (429, 113)
        finish.set()
        await exchange.answered.wait()
        assert exchange.status == 200


DEEP = b"[" * 5000 + b"]" * 5000


async def test_deeply_nested_json_is_a_coded_error_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_app() as app:
        body = b'{"channel":"c","data":' + DEEP + b"}"
        status, _headers, reply = await http_request(app, "POST", "/api/publish", body)
        assert (status, reply["code"]) == (400, 100)
        assert "nested too deeply" in reply["message"]
        async with websocket(app) as client:
            for frame in (body, b'{"type":"publish","id":1,"channel":"c","data":' + DEEP + b"}"):
                await client.send_bytes(frame)
                error = await client.receive_object()
                assert (error["type"], error["code"]) == ("error", 100)
            assert await client.request({"type": "ping", "id": 2}) == {"type": "reply", "id": 2}
    assert "Traceback" not in caplog.text
    assert not [record for record in caplog.records if record.exc_info]


async def test_an_open_api_shows_only_what_anonymous_clients_may_see() -> None:
    rules = [ChannelRule(match="user:*", subscribe="owner"), ChannelRule(match="*")]
    bob = token("bob")
    async with running_app(Settings(auth=AuthSettings(secret=SECRET), channels=rules)) as app:
        async with websocket(app) as anonymous, websocket(app, token=bob) as owner:
            await anonymous.request({"type": "subscribe", "id": 1, "channel": "news"})
            reply = await owner.request({"type": "subscribe", "id": 1, "channel": "user:bob"})
            assert reply["type"] == "reply"
            status, _, stats = await http_request(app, "GET", "/api/stats")
            assert status == 200
            assert [item["channel"] for item in stats["channels"]] == ["news"]


@pytest.mark.parametrize(
    ("server", "logged"),
    [
        (ServerSettings(), "no server.api_keys are set"),
        (ServerSettings(api_open=True), "server.api_open is set"),
        (ServerSettings(api_keys=["k1"]), None),
    ],
    ids=["no-keys", "declared-open", "keys"],
)
async def test_an_open_api_is_logged_at_startup(
    caplog: pytest.LogCaptureFixture, server: ServerSettings, logged: str | None
) -> None:
    with caplog.at_level(logging.INFO, "clarion"):
        async with running_app(Settings(server=server)):
            pass
    open_api = [record for record in caplog.records if "the HTTP API is open" in record.message]
    if logged is None:
        assert open_api == []
    else:
        (record,) = open_api
        assert record.levelno == logging.WARNING
        assert logged in record.message


async def test_a_publish_retried_with_its_idempotency_key_is_published_once() -> None:
    async with running_app() as app, websocket(app) as subscriber:
        await subscriber.request({"type": "subscribe", "id": 1, "channel": "c"})
        body = b'{"channel":"c","data":"once","idempotency_key":"order-17"}'
        first = await http_request(app, "POST", "/api/publish", body)
        again = await http_request(app, "POST", "/api/publish", body)
        assert first[2] == {
            "type": "reply",
            "channel": "c",
            "offset": 1,
            "epoch": first[2]["epoch"],
        }
        assert again[2] == {**first[2], "duplicate": True}
        async with websocket(app) as publisher:
            request = {"type": "publish", "id": 2, "channel": "c", "data": "twice"}
            keyed = {**request, "idempotency_key": "order-17"}
            assert await publisher.request(keyed) == {**first[2], "id": 2, "duplicate": True}
            fresh = await publisher.request({**keyed, "idempotency_key": "order-18"})
            assert (fresh["offset"], "duplicate" in fresh) == (2, False)
        assert await subscriber.receive_object() == {
            "type": "message",
            "channel": "c",
            "offset": 1,
            "data": "once",
        }
        assert (await subscriber.receive_object())["offset"] == 2


@pytest.mark.parametrize("key", ["", "k" * 129, 17], ids=["empty", "too-long", "not-a-string"])
async def test_a_bad_idempotency_key_is_refused(key: Any) -> None:
    body = msgspec.json.encode({"channel": "c", "data": 1, "idempotency_key": key})
    async with running_app() as app:
        status, _, reply = await http_request(app, "POST", "/api/publish", body)
        assert (status, reply["code"]) == (400, 101)
        assert reply["message"].startswith("idempotency_key: ")
        async with websocket(app) as client:
            request = {
                "type": "publish",
                "id": 1,
                "channel": "c",
                "data": 1,
                "idempotency_key": key,
            }
            error = await client.request(request)
            assert (error["type"], error["code"], error["id"]) == ("error", 101, 1)
