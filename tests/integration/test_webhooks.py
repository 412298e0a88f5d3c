"""Webhooks, against a receiver in the test that verifies every signature with the
docs' own snippet: what is sent, once per cluster, retried, and never in a publisher's
way."""

from __future__ import annotations

import socket
import struct
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, get_args

import anyio
import anyio.abc
import msgspec
import pytest

from channels.activity import ActivityName
from channels.config import BrokerConfig, ChannelRule
from service.settings import AuthSettings, ServerSettings, Settings, WebhookSettings
from tests.support.auth import SECRET, token
from tests.support.docs import DOCS, code_block
from tests.support.redis import free_port
from tests.support.server import Server, http_exchange, running_server
from tests.support.wsclient import HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from anyio.abc import SocketStream

    from service.runner import Backend

HOOK_SECRET = "a-webhook-secret-of-the-tests"
EVERY_EVENT: list[Any] = list(get_args(ActivityName))


OCCUPANCY = ("channel_occupied", "channel_vacated")


def documented_verify() -> Callable[[bytes, str, str], list[dict[str, Any]]]:
    """docs/webhooks.md's ``verify``, as written."""
    namespace: dict[str, Any] = {}
    exec(code_block(DOCS / "webhooks.md", "## Verifying a request", "python"), namespace)
    verify: Callable[[bytes, str, str], list[dict[str, Any]]] = namespace["verify"]
    return verify


class Receiver:
    """An HTTP endpoint that takes webhook POSTs: it verifies each, keeps its events, and
    answers with the statuses it is told to (200 once they run out)."""

    def __init__(
        self, statuses: list[int] | None = None, *, silent: bool = False, reset: bool = False
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.statuses = list(statuses or [])
        self.silent = silent
        self.reset = reset
        self.arrived = anyio.Event()
        self._verify = documented_verify()

    async def serve(self, stream: SocketStream) -> None:
        async with stream:
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive()
            head, _, body = received.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {
                k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
            }
            assert lines[0] == "POST /hooks HTTP/1.1", lines[0]
            length = int(headers["content-length"])
            while len(body) < length:
                body += await stream.receive()
            assert headers["content-type"] == "application/json"
            assert (
                abs(
                    int(headers["x-clarion-timestamp"])
                    - msgspec.json.decode(body)["time_ms"] / 1000
                )
                < 2
            )
            events = self._verify(body, headers["x-clarion-signature"], HOOK_SECRET)
            self.requests += 1
            if self.reset:  # a TCP reset instead of an answer
                raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if self.silent:
                await anyio.sleep_forever()
            status = self.statuses.pop(0) if self.statuses else 200
            if status == 200:
                self.events += events
                self.arrived.set()
            await stream.send(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % status)

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        while len(self.events) < count:
            self.arrived = anyio.Event()
            await self.arrived.wait()
        return self.events


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=receiver.port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, receiver.serve)
        try:
            yield receiver
        finally:
            tg.cancel_scope.cancel()


def hooked(receiver: Receiver, broker: BrokerConfig = BrokerConfig(), **hook: Any) -> Settings:  # noqa: B008 - a frozen Struct
    return Settings(
        broker=broker,
        auth=AuthSettings(secret=SECRET),
        server=ServerSettings(api_keys=["k"]),
        channels=[ChannelRule(match="room:*", presence=True), ChannelRule(match="*")],
        webhooks=[
            WebhookSettings(
                url=receiver.url,
                events=hook.pop("events", EVERY_EVENT),
                secret=HOOK_SECRET,
                batch_seconds=hook.pop("batch_seconds", 0.02),
                **hook,
            )
        ],
    )


def names(events: list[dict[str, Any]]) -> list[str]:
    return [event["name"] for event in events]


async def metric(server: Server, line: str) -> bool:
    return line in (await http_exchange(server, "GET", "/metrics"))[1].decode()


async def test_events_are_posted_signed_in_order(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    with anyio.fail_after(20):
        async with (
            receiving(Receiver()) as receiver,
            running_server(hooked(receiver, broker_config), anyio_backend, free_tcp_port) as server,
        ):
            async with connect(f"{server.ws_url}?token={token('alice')}") as alice:
                await subscribe(alice, "room:1")
                await alice.request(
                    {"type": "publish", "id": 1, "channel": "room:1", "data": {"hi": 1}}
                )
                await alice.receive_object()  # its own message
            events = await receiver.wait_for(5)
            # A connection's events come in order, and so do a channel's occupancy
            # changes; through Redis the two orders interleave as the node's upkeep
            # decides occupancy, a moment after the change.
            client_side = [e for e in events if e["name"] not in OCCUPANCY]
            assert names(client_side) == ["member_joined", "client_published", "member_left"]
            assert [e for e in events if e["name"] in OCCUPANCY] == [
                {"name": "channel_occupied", "channel": "room:1"},
                {"name": "channel_vacated", "channel": "room:1"},
            ]
            if broker_config.kind == "memory":
                assert names(events)[0] == "channel_occupied"
                assert names(events)[-1] == "channel_vacated"
            alice_info = client_side[0]["client"]
            assert alice_info["user"] == "alice"
            assert client_side[1] == {
                "name": "client_published",
                "channel": "room:1",
                "client": alice_info,
                "data": {"hi": 1},
            }
            assert client_side[2] == {
                "name": "member_left",
                "channel": "room:1",
                "client": alice_info,
            }
            # The backend's own publishes are not reported back to it.
            body = msgspec.json.encode({"channel": "news", "data": 1})
            headers = "authorization: Bearer k\r\n"
            assert (await http_exchange(server, "POST", "/api/publish", body, headers))[0] == 200
            with pytest.raises(HandshakeRefused):
                async with connect(f"{server.ws_url}?token=forged"):
                    pass
            events = await receiver.wait_for(6)
            assert events[5] == {
                "name": "connection_refused",
                "code": 109,
                "message": events[5]["message"],
            }
            assert await metric(server, 'clarion_webhook_events_total{outcome="sent"} 6.0')


async def test_an_endpoint_gets_only_the_events_it_lists(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with receiving(Receiver()) as receiver:
            config = hooked(receiver, events=["channel_vacated"])
            async with running_server(config, anyio_backend, free_tcp_port) as server:
                async with connect(server.ws_url) as client:
                    await subscribe(client, "room:2")
                assert await receiver.wait_for(1) == [
                    {"name": "channel_vacated", "channel": "room:2"}
                ]


async def test_a_failing_endpoint_is_retried_until_it_answers(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with (
            receiving(Receiver(statuses=[500, 503])) as receiver,
            running_server(hooked(receiver), anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as client,
        ):
            await subscribe(client, "news")
            events = await receiver.wait_for(1)
            assert events == [{"name": "channel_occupied", "channel": "news"}]
            assert receiver.requests == 3  # the same body, signed the same, each time
            assert await metric(server, 'clarion_webhook_events_total{outcome="sent"} 1.0')


async def test_events_beyond_the_retries_are_given_up_and_counted(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with (
            receiving(Receiver(statuses=[500, 500])) as receiver,
            running_server(hooked(receiver, retries=1), anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as client,
        ):
            await subscribe(client, "news")
            while not await metric(server, 'clarion_webhook_events_total{outcome="failed"} 1.0'):  # noqa: ASYNC110 - polls the metrics
                await anyio.sleep(0.05)
            assert receiver.requests == 2
            assert receiver.events == []


async def test_a_dead_endpoint_never_slows_a_publisher(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    receiver = Receiver(silent=True)  # takes the POST, never answers
    hook: dict[str, Any] = {"queue_events": 5, "timeout_seconds": 30.0, "batch_max_events": 1}
    with anyio.fail_after(20):
        async with (
            receiving(receiver),
            running_server(hooked(receiver, **hook), anyio_backend, free_tcp_port) as server,
            connect(f"{server.ws_url}?token={token('alice')}") as alice,
        ):
            await subscribe(alice, "news")
            started = anyio.current_time()
            for index in range(200):
                await alice.send_json(
                    {"type": "publish", "id": index, "channel": "news", "data": index}
                )
                got = [await alice.receive_object() for _ in range(2)]  # reply and message
                assert sorted(item["type"] for item in got) == ["message", "reply"]
            assert anyio.current_time() - started < 10  # not 200 x the webhook's timeout
            assert receiver.requests == 1  # the first POST hangs; the queue holds 5
            assert await metric(server, 'clarion_webhook_events_total{outcome="dropped"} 195.0')


async def test_occupancy_is_reported_once_across_nodes(
    anyio_backend: Backend, redis_broker: BrokerConfig
) -> None:
    with anyio.fail_after(30):
        async with receiving(Receiver()) as receiver:
            config = hooked(receiver, redis_broker, events=["channel_occupied", "channel_vacated"])
            async with (
                running_server(config, anyio_backend, free_port()) as a,
                running_server(config, anyio_backend, free_port()) as b,
            ):
                async with connect(a.ws_url) as on_a:
                    await subscribe(on_a, "shared")
                    await receiver.wait_for(1)
                    async with connect(b.ws_url) as on_b:
                        await subscribe(on_b, "shared")
                        await subscribe(on_b, "only-b")
                        await receiver.wait_for(2)
                    await receiver.wait_for(3)  # only-b vacated; shared still on A
                await receiver.wait_for(4)
                await anyio.sleep(0.3)  # nothing more comes
            assert sorted(map(str, receiver.events)) == sorted(
                map(
                    str,
                    [
                        {"name": "channel_occupied", "channel": "shared"},
                        {"name": "channel_occupied", "channel": "only-b"},
                        {"name": "channel_vacated", "channel": "only-b"},
                        {"name": "channel_vacated", "channel": "shared"},
                    ],
                )
            )
            assert receiver.events[-1] == {"name": "channel_vacated", "channel": "shared"}


async def test_an_endpoint_that_resets_costs_its_events_never_the_node(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with (
            receiving(Receiver(reset=True)) as receiver,
            running_server(hooked(receiver, retries=1), anyio_backend, free_tcp_port) as server,
            connect(server.ws_url) as client,
        ):
            await subscribe(client, "news")
            while not await metric(server, 'clarion_webhook_events_total{outcome="failed"} 1.0'):  # noqa: ASYNC110 - polls the metrics
                await anyio.sleep(0.05)
            assert receiver.requests == 2
            assert (await http_exchange(server, "GET", "/ready"))[0] == 200
            reply = await client.request({"type": "publish", "id": 1, "channel": "news", "data": 1})
            assert reply["type"] in ("reply", "message")


async def test_a_node_that_stops_reports_the_channels_it_vacates(
    anyio_backend: Backend, free_tcp_port: int, broker_config: BrokerConfig
) -> None:
    events: list[Any] = ["channel_occupied", "channel_vacated"]
    with anyio.fail_after(30):
        async with receiving(Receiver()) as receiver, AsyncExitStack() as clients:
            config = hooked(receiver, broker_config, events=events)
            async with running_server(config, anyio_backend, free_tcp_port) as server:
                client = await clients.enter_async_context(connect(server.ws_url))
                await subscribe(client, "room:9")
                await receiver.wait_for(1)
            # The node drained its client on its way out: the channel it held alone is
            # vacated, and said so before the node stopped.
            assert receiver.events == [
                {"name": "channel_occupied", "channel": "room:9"},
                {"name": "channel_vacated", "channel": "room:9"},
            ]
