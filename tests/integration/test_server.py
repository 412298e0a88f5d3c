"""A real hypercorn (trio and asyncio workers) on 127.0.0.1, real WebSocket clients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from channels.config import ChannelRule, History
from service.settings import ServerSettings, Settings
from tests.support.server import Server, http_publish, running_server
from tests.support.tls import self_signed
from tests.support.wsclient import Client, Closed, connect, subscribe

if TYPE_CHECKING:
    from pathlib import Path

    from service.runner import Backend


async def test_websocket_and_http_publishes_reach_subscribers(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(15):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as alice, connect(server.ws_url) as bob:
                await subscribe(alice, "room")
                reply = await bob.request(
                    {"type": "publish", "id": 1, "channel": "room", "data": {"text": "hé"}}
                )
                assert reply["offset"] == 1
                assert await alice.receive_object() == {
                    "type": "message",
                    "channel": "room",
                    "offset": 1,
                    "data": {"text": "hé"},
                }
                assert (await http_publish(server, "room", [1, 2]))["offset"] == 2
                assert (await alice.receive_object())["data"] == [1, 2]


async def test_a_thousand_messages_arrive_in_order(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(30):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            async with (
                connect(server.ws_url) as first,
                connect(server.ws_url) as second,
                connect(server.ws_url) as publisher,
            ):
                await subscribe(first, "busy")
                await subscribe(second, "busy")
                for index in range(1000):  # pipelined: replies are read afterwards
                    await publisher.send_json(
                        {"type": "publish", "id": index, "channel": "busy", "data": index}
                    )
                replies = [await publisher.receive_object() for _ in range(1000)]
                assert [reply["id"] for reply in replies] == list(range(1000))
                for client in (first, second):
                    got = [await client.receive_object() for _ in range(1000)]
                    assert [message["data"] for message in got] == list(range(1000))
                    assert [message["offset"] for message in got] == list(range(1, 1001))
                    assert client.frames_received <= 1000 + 1


async def test_over_tls_messages_arrive_in_order(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    # hypercorn's certfile/keyfile: on asyncio frames go through the TLS transport, on
    # trio (ciphertext on the socket) through hypercorn, from writer tasks.
    tls = self_signed(tmp_path)
    context = tls.client_context()
    with anyio.fail_after(30):
        async with running_server(Settings(), anyio_backend, free_tcp_port, tls=tls) as server:
            assert server.ws_url.startswith("wss://")
            async with (
                connect(server.ws_url, ssl_context=context) as subscriber,
                connect(server.ws_url, ssl_context=context) as publisher,
            ):
                await subscribe(subscriber, "secure")
                for index in range(300):
                    await publisher.send_json(
                        {"type": "publish", "channel": "secure", "data": index}
                    )
                got = [await subscriber.receive_object() for _ in range(300)]
                assert [message["data"] for message in got] == list(range(300))


async def test_channels_are_isolated(anyio_backend: Backend, free_tcp_port: int) -> None:
    with anyio.fail_after(15):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as one, connect(server.ws_url) as two:
                await subscribe(one, "a")
                await subscribe(two, "b")
                await http_publish(server, "a", "for a")
                await http_publish(server, "b", "for b")
                assert (await one.receive_object())["data"] == "for a"
                assert (await two.receive_object())["data"] == "for b"
                # Nothing else is due: a ping's reply comes next on each connection.
                assert await one.request({"type": "ping", "id": 1}) == {"type": "reply", "id": 1}
                assert await two.request({"type": "ping", "id": 1}) == {"type": "reply", "id": 1}


RULES = Settings(
    channels=[
        ChannelRule(match="chat:*"),
        ChannelRule(match="chat:readonly", publish=False),
        ChannelRule(match="alerts:*", publish=False),
    ]
)


@pytest.mark.parametrize(
    ("channel", "error"),
    [
        ("chat:1", None),
        ("chat:readonly", 202),
        ("alerts:fire", 202),
        ("weather", 201),
        ("chat:not valid", 200),
    ],
)
async def test_pattern_rules_and_publish_permissions(
    anyio_backend: Backend, free_tcp_port: int, channel: str, error: int | None
) -> None:
    with anyio.fail_after(15):
        async with running_server(RULES, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as client:
                reply = await client.request(
                    {"type": "publish", "id": 1, "channel": channel, "data": 1}
                )
    if error is None:
        assert reply["type"] == "reply"
    else:
        assert (reply["type"], reply["code"], reply["id"]) == ("error", error, 1)


async def test_bad_input_gets_its_code_and_the_connection_keeps_working(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    frames: list[tuple[str | bytes, int]] = [
        ("{oops", 100),
        (b"\xff\xfe binary garbage", 100),
        ('{"type":"teleport","id":1}', 102),
        ('{"type":"publish","id":1,"channel":"c"}', 101),
        ('{"type":"subscribe","id":1,"channel":["c"]}', 101),
        ('{"type":"subscribe","id":1,"channel":"no spaces"}', 200),
        ('{"type":"subscribe","id":1,"channel":"chat:1","unknown":true}', 101),
    ]
    with anyio.fail_after(15):
        async with running_server(RULES, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as client:
                for frame, code in frames:
                    if isinstance(frame, bytes):
                        await client.send_bytes(frame)
                    else:
                        await client.send_text(frame)
                    error = await client.receive_object()
                    assert (error["type"], error["code"]) == ("error", code), frame
                reply = await subscribe(client, "chat:1")
                assert reply["offset"] == 0


async def test_an_oversize_frame_closes_with_1009(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=ServerSettings(max_request_bytes=1024))
    with anyio.fail_after(15):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as client:
                await client.send_text('{"type":"ping","pad":"' + "x" * 2000 + '"}')
                closed = await client.wait_closed()
    assert closed.code == 1009


async def test_recovery_with_since_replays_exactly_the_missed_messages(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(channels=[ChannelRule(match="*", history=History(size=100))])
    with anyio.fail_after(15):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as keeper:
                await subscribe(keeper, "feed")  # keeps the stream while the reader is away
                async with connect(server.ws_url) as reader:
                    epoch = (await subscribe(reader, "feed"))["epoch"]
                    for index in range(3):
                        await http_publish(server, "feed", index)
                    seen = [await reader.receive_object() for _ in range(3)]
                last_offset = seen[-1]["offset"]
                for index in range(3, 8):
                    await http_publish(server, "feed", index)
                async with connect(server.ws_url) as reader:
                    reply = await subscribe(
                        reader, "feed", since={"offset": last_offset, "epoch": epoch}
                    )
                    assert (reply["recovered"], reply["offset"], reply["epoch"]) == (True, 8, epoch)
                    await http_publish(server, "feed", "live")
                    got = [await reader.receive_object() for _ in range(6)]
                    assert [message["data"] for message in got] == [3, 4, 5, 6, 7, "live"]
                    assert [message["offset"] for message in got] == list(range(4, 10))
                async with connect(server.ws_url) as stranger:
                    reply = await subscribe(stranger, "feed", since={"offset": 2, "epoch": "old"})
                    assert reply["recovered"] is False
                    assert await stranger.request({"type": "ping", "id": 0}) == {
                        "type": "reply",
                        "id": 0,
                    }


async def _flood_until_slow_consumer(
    server: Server, fast: Client, publisher: Client, payload: str
) -> int:
    """Publish until the server gives up on a slow subscriber; check the fast one keeps up.

    Returns how many messages were published.
    """
    hub = server.hub
    published = 0
    while not hub.statistics().slow_consumers:
        if published == 5000:
            raise AssertionError("the slow consumer was never given up on")
        await publisher.request(
            {"type": "publish", "channel": "firehose", "data": [published, payload]}
        )
        message = await fast.receive_object()
        assert message["data"][0] == published
        published += 1
    return published


async def test_a_slow_consumer_gets_an_ordered_prefix_then_4000(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=ServerSettings(outbox_messages=16))
    with anyio.fail_after(60):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with (
                connect(server.ws_url) as slow,
                connect(server.ws_url) as fast,
                connect(server.ws_url) as publisher,
            ):
                await subscribe(slow, "firehose")
                await subscribe(fast, "firehose")
                # The slow client reads nothing until the server has given up on it.
                published = await _flood_until_slow_consumer(server, fast, publisher, "x" * 32_000)
                received, closed = await slow.receive_until_closed()
                offsets = [message["offset"] for message in received]
                assert (closed.code, closed.reason) == (4000, "slow consumer")
                assert offsets == list(range(1, len(offsets) + 1))
                assert len(offsets) < published
                # Publishing goes on for the others.
                await publisher.request({"type": "publish", "channel": "firehose", "data": [-1]})
                assert (await fast.receive_object())["data"] == [-1]


async def test_a_client_that_never_reads_is_cut_off_by_the_write_timeout(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=ServerSettings(outbox_messages=16, write_timeout_seconds=1))
    with anyio.fail_after(60):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as stuck:
                await subscribe(stuck, "firehose")
                async with connect(server.ws_url) as fast, connect(server.ws_url) as publisher:
                    await subscribe(fast, "firehose")
                    await _flood_until_slow_consumer(server, fast, publisher, "x" * 32_000)
                # The server lets go of the connection: the close frame cannot be sent
                # (the session gives up after write_timeout_seconds), and the kernel
                # drops the TCP connection once its data stays unacknowledged that long.
                # On trio only the kernel can end it: hypercorn's sends are shielded.
                await server.hub.wait_no_connections()
                await anyio.sleep(3)  # let the kernel's TCP_USER_TIMEOUT (1 s) expire
                received, closed = await stuck.receive_until_closed()
                assert closed.code == 1006  # dropped, not closed: no close frame came
                assert len(received) < 16  # far less than was published to it


async def test_connect_disconnect_cycles_leave_no_subscriber_or_task(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(60):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            hub = server.hub
            async with connect(server.ws_url) as warmup:
                await subscribe(warmup, "c")
            await _settle(hub)
            tasks_before = len(anyio.get_running_tasks())
            for cycle in range(500):
                async with connect(server.ws_url) as client:
                    await subscribe(client, f"c{cycle % 7}")
                    await subscribe(client, "shared")
                    if cycle % 2:
                        await client.close()  # a clean close; otherwise the socket just drops
            await _settle(hub)
            stats = hub.statistics()
            assert (stats.connections, stats.channels, stats.subscriptions) == (0, 0, 0)
            assert len(anyio.get_running_tasks()) == tasks_before


async def _settle(hub: Any) -> None:
    """Wait until the server has finished every closed connection."""
    await hub.wait_no_connections()
    # hypercorn's connection tasks end just after our session does: poll for them.
    previous = -1
    while (count := len(anyio.get_running_tasks())) != previous:
        previous = count
        await anyio.sleep(0.05)


async def test_shutdown_sends_queued_messages_then_closes_with_1001(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    closed: list[Closed] = []
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tg:
            async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
                subscribed = anyio.Event()

                async def listen() -> None:
                    async with connect(server.ws_url) as client:
                        await subscribe(client, "news")
                        subscribed.set()
                        got = [await client.receive_object() for _ in range(3)]
                        assert [message["data"] for message in got] == [0, 1, 2]
                        closed.append(await client.wait_closed())

                tg.start_soon(listen)
                await subscribed.wait()
                for index in range(3):
                    await http_publish(server, "news", index)
    assert (closed[0].code, closed[0].reason) == (1001, "server shutting down")
