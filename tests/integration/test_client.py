"""The Python client (`service.client`) against a real hypercorn on 127.0.0.1, on both
backends: requests and typed errors, coalesced frames, pings, reconnecting and recovery,
tokens, the bounded subscription buffer, TLS, and the ``clarion publish`` and
``clarion subscribe`` commands as real processes."""

from __future__ import annotations

import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from channels.config import ChannelRule, History
from channels.errors import (
    AlreadySubscribed,
    ChannelNotFound,
    PermissionDenied,
    PresenceDisabled,
    TooManySubscriptions,
)
from channels.publication import Position
from service.client import (
    ClarionError,
    ConnectionFailed,
    HandshakeRefused,
    Message,
    NotRecovered,
    SlowSubscriber,
    SubscriptionEnded,
    open_client,
)
from service.errors import InvalidToken, Unauthenticated
from service.settings import AuthSettings, ServerSettings, Settings
from tests.support.auth import OPEN_API, SECRET, token
from tests.support.data import take
from tests.support.redis import free_port
from tests.support.server import Server, http_publish, running_server
from tests.support.tls import self_signed
from tests.support.wsclient import connect

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from channels.config import BrokerConfig
    from service.client import SubscriptionEvent
    from service.runner import Backend

BIN = Path(sys.executable).parent
#: A client that reconnects at once: the servers the tests wait for are local.
open_fast_client = partial(open_client, backoff_initial_seconds=0.02, backoff_max_seconds=0.1)


def datas(events: list[SubscriptionEvent]) -> list[Any]:
    return [event.data for event in events if isinstance(event, Message)]


class Node:
    """A server run by a task of its own, so a test can stop and restart it while its
    client stays open (task groups must exit in the order they were entered). Stop it
    with `stop`: cancelling hypercorn's asyncio worker mid-shutdown fails."""

    def __init__(self, config: Settings, backend: Backend, port: int) -> None:
        self.config, self.backend, self.port = config, backend, port
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        self.server: Server | None = None

    async def run(self, *, task_status: TaskStatus[Server]) -> None:
        try:
            async with running_server(self.config, self.backend, self.port) as server:
                self.server = server
                task_status.started(server)
                await self._stop.wait()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Shut the server down (clients are closed with 1001) and wait until it is."""
        self._stop.set()
        await self._stopped.wait()


async def test_subscribe_publish_presence_and_history_round_trip(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    rules = [ChannelRule(match="*", history=History(size=10), presence=True)]
    with anyio.fail_after(15):
        async with (
            running_server(Settings(channels=rules), anyio_backend, free_tcp_port) as server,
            open_client(server.ws_url) as client,
        ):
            async with client.subscribe("news") as news:
                start = news.position
                assert start is not None
                assert start.offset == 0
                position = await client.publish("news", {"text": "hé"})
                assert position == Position(1, start.epoch)
                assert await news.receive() == Message("news", 1, start.epoch, {"text": "hé"})
                await http_publish(server, "news", [1, 2])
                assert await news.receive() == Message("news", 2, start.epoch, [1, 2])
                assert news.position == Position(2, start.epoch)
                clients = await client.presence("news")
                assert [info.user for info in clients] == [None]
                page = await client.history("news", limit=1)
                assert page.position == Position(2, start.epoch)
                assert page.messages == [Message("news", 2, start.epoch, [1, 2])]
                page = await client.history("news", since=0)
                assert datas(list(page.messages)) == [{"text": "hé"}, [1, 2]]
                await client.ping()
            # Leaving the block unsubscribed: the server no longer lists this client.
            assert await client.presence("news") == []
            assert client.statistics().subscriptions == 0


async def test_a_keyed_publish_is_retried_safely_and_private_reads_take_a_token(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    rules = [
        ChannelRule(match="secret:*", private=True, history=History(size=10), presence=True),
        ChannelRule(match="*", history=History(size=10)),
    ]
    config = Settings(server=OPEN_API, auth=AuthSettings(secret=SECRET), channels=rules)
    alice = token()
    secret_token = token(channels=["secret:1"])
    with anyio.fail_after(15):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            open_client(server.ws_url, token=alice) as client,
        ):
            first = await client.publish("news", "once", idempotency_key="news-1")
            assert await client.publish("news", "once", idempotency_key="news-1") == first
            assert (await client.publish("news", "next")).offset == first.offset + 1
            page = await client.history("news")
            assert datas(list(page.messages)) == ["once", "next"]
            await http_publish(server, "secret:1", "classified")
            with pytest.raises(ClarionError) as caught:
                await client.history("secret:1")
            assert caught.value.code == PermissionDenied.code
            with pytest.raises(ClarionError) as caught:
                await client.presence("secret:1")
            assert caught.value.code == PermissionDenied.code
            page = await client.history("secret:1", token=secret_token)
            assert datas(list(page.messages)) == ["classified"]
            assert await client.presence("secret:1", token=secret_token) == []


async def test_refusals_raise_typed_errors_with_their_codes(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(
        server=ServerSettings(max_subscriptions=1),
        channels=[ChannelRule(match="news"), ChannelRule(match="locked", publish=False)],
    )
    with anyio.fail_after(15):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            open_client(server.ws_url) as client,
        ):
            with pytest.raises(ClarionError) as caught:
                async with client.subscribe("weather"):
                    pass
            assert caught.value.code == ChannelNotFound.code
            assert caught.value.message == "no channel rule matches 'weather'"
            with pytest.raises(ClarionError) as caught:
                await client.publish("locked", 1)
            assert caught.value.code == PermissionDenied.code
            with pytest.raises(ClarionError) as caught:
                await client.presence("news")
            assert caught.value.code == PresenceDisabled.code
            async with client.subscribe("news"):
                with pytest.raises(ClarionError) as caught:
                    async with client.subscribe("locked"):
                        pass
                assert caught.value.code == TooManySubscriptions.code
                with pytest.raises(ClarionError) as caught:
                    async with client.subscribe("news"):
                        pass
                assert caught.value.code == AlreadySubscribed.code
            # Errors leave the connection usable.
            assert (await client.publish("news", "still here")).offset == 1
            assert client.statistics().connections == 1


async def test_a_refused_or_failed_connection_raises_at_once(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=OPEN_API, auth=AuthSettings(required=True, secret=SECRET))
    with anyio.fail_after(15):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            with pytest.raises(HandshakeRefused) as refused:
                async with open_client(server.ws_url):
                    pass
            assert (refused.value.status, refused.value.code) == (401, Unauthenticated.code)
            with pytest.raises(HandshakeRefused) as refused:
                async with open_client(server.ws_url, token="not.a.token"):
                    pass
            assert refused.value.code == InvalidToken.code
        with pytest.raises(ConnectionFailed) as failed:
            async with open_client(server.ws_url):
                pass
        assert failed.value.code == 1006
        assert isinstance(failed.value.__cause__, OSError)


async def test_coalesced_frames_are_split_into_messages(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    # Flushes at least 50 ms apart: pipelined publishes share frames (JSON arrays).
    config = Settings(server=ServerSettings(flush_delay_seconds=0.05))
    with anyio.fail_after(15):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            open_client(server.ws_url) as client,
            client.subscribe("busy") as busy,
            connect(server.ws_url) as publisher,
        ):
            for index in range(100):
                await publisher.send_json(
                    {"type": "publish", "id": index, "channel": "busy", "data": index}
                )
            events = await take(busy, 100)
            assert datas(events) == list(range(100))
            assert [event.offset for event in events if isinstance(event, Message)] == list(
                range(1, 101)
            )
            assert client.statistics().frames_received < 50


async def test_server_pings_are_answered_and_the_connection_stays(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=ServerSettings(ping_interval_seconds=0.1, pong_timeout_seconds=0.2))
    with anyio.fail_after(15):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            open_client(server.ws_url) as client,
            client.subscribe("quiet") as quiet,
        ):
            # Not a synchronization: the property under test is that time passes (three
            # pong timeouts) without the server closing the connection (4002).
            await anyio.sleep(0.6)
            assert client.statistics().pongs_sent >= 2
            await http_publish(server, "quiet", "still subscribed")
            assert datas(await take(quiet, 1)) == ["still subscribed"]
            assert client.statistics().connections == 1


async def test_a_reconnecting_client_gets_what_it_missed_exactly_once_in_order(
    anyio_backend: Backend, redis_broker: BrokerConfig
) -> None:
    # Two nodes on one Redis: the client's node stops, messages are published on the
    # other, the node comes back on the same port, and the client recovers from history.
    config = Settings(
        broker=redis_broker, channels=[ChannelRule(match="*", history=History(size=100))]
    )
    node = Node(config, anyio_backend, free_port())
    with anyio.fail_after(30):
        async with (
            running_server(config, anyio_backend, free_port()) as other,
            anyio.create_task_group() as tg,
        ):
            first = await tg.start(node.run)
            async with (
                open_fast_client(first.ws_url) as client,
                client.subscribe("feed") as feed,
            ):
                for index in range(3):
                    await client.publish("feed", index)
                before = await take(feed, 3)
                await node.stop()
                for index in range(3, 8):
                    await http_publish(other, "feed", index)
                again = Node(config, anyio_backend, node.port)
                await tg.start(again.run)
                await http_publish(other, "feed", 8)
                position = await client.publish("feed", "after")  # waits for the reconnect
                after = await take(feed, 7)
                assert datas(before + after) == [*range(9), "after"]
                offsets = [event.offset for event in before + after if isinstance(event, Message)]
                assert offsets == list(range(1, 11))
                assert position.offset == 10
                # Nothing more came in between: the next message is the next one published.
                await client.publish("feed", "last")
                assert datas(await take(feed, 1)) == ["last"]
                assert client.statistics().connections == 2
            await again.stop()


async def test_not_recovered_is_surfaced_when_history_cannot_cover_the_gap(
    anyio_backend: Backend,
) -> None:
    # The memory broker: a restarted node has a new epoch, so the client's since fails.
    port = free_port()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            node = Node(Settings(), anyio_backend, port)
            server = await tg.start(node.run)
            async with (
                open_fast_client(server.ws_url) as client,
                client.subscribe("feed") as feed,
            ):
                await client.publish("feed", "old")
                (old,) = await take(feed, 1)
                assert isinstance(old, Message)
                await node.stop()
                again = Node(Settings(), anyio_backend, port)
                await tg.start(again.run)
                position = await client.publish("feed", "new")
                notice, new = await take(feed, 2)
                assert isinstance(notice, NotRecovered)
                assert notice.since == Position(1, old.epoch)
                assert notice.position.epoch != old.epoch
                assert new == Message("feed", 1, notice.position.epoch, "new")
                assert position == Position(1, notice.position.epoch)
                assert feed.position == position
            await again.stop()


async def test_an_expired_token_is_replaced_through_get_token_after_4001(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    # History keeps the channel's stream (and epoch) while its one subscriber is away.
    config = Settings(
        server=OPEN_API,
        auth=AuthSettings(required=True, secret=SECRET, leeway_seconds=0),
        channels=[ChannelRule(match="*", history=History(size=10))],
    )
    fetched = anyio.Event()
    calls = 0

    async def get_token() -> str:
        nonlocal calls
        calls += 1
        fetched.set()
        return token(seconds=60)

    with anyio.fail_after(20):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            open_fast_client(server.ws_url, token=token(seconds=2), get_token=get_token) as client,
            client.subscribe("room") as room,
        ):
            await client.publish("room", "before")
            await fetched.wait()  # the server closed the connection with 4001
            await client.publish("room", "after")
            events = await take(room, 2)
            assert datas(events) == ["before", "after"]
            assert calls == 1
            assert client.statistics().connections == 2


async def test_a_slow_subscriber_is_ended_alone_and_can_resume(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(channels=[ChannelRule(match="*", history=History(size=10))])
    with anyio.fail_after(15):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            open_client(server.ws_url) as client,
            client.subscribe("other") as other,
        ):
            async with client.subscribe("slow", buffer_events=2) as slow:
                for index in range(5):
                    # A publisher receives its own message before the reply: by each
                    # reply the client has read the message and offered it.
                    await client.publish("slow", index)
                # The reader did not wait: other channels go on.
                await client.publish("other", "unaffected")
                assert datas(await take(other, 1)) == ["unaffected"]
                assert datas(await take(slow, 2)) == [0, 1]
                with pytest.raises(SlowSubscriber) as caught:
                    await slow.receive()
                assert (caught.value.code, caught.value.channel) == (4000, "slow")
                resume = slow.position
            assert resume is not None
            assert resume.offset == 2
            # The client unsubscribed: subscribing again works, and resumes.
            async with client.subscribe("slow", since=resume) as again:
                assert datas(await take(again, 3)) == [2, 3, 4]
            assert client.statistics().connections == 1


async def test_an_unsubscribed_notice_ends_the_subscription_after_its_messages(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(channels=[ChannelRule(match="vip"), ChannelRule(match="open")])
    with anyio.fail_after(15):
        async with (
            running_server(config, anyio_backend, free_tcp_port) as server,
            open_client(server.ws_url) as client,
            client.subscribe("vip") as vip,
        ):
            await client.publish("vip", "kept")
            server.hub.reconfigure(Settings(channels=[ChannelRule(match="open")]))
            assert datas(await take(vip, 1)) == ["kept"]
            with pytest.raises(SubscriptionEnded) as caught:
                await vip.receive()
            assert (caught.value.code, caught.value.channel) == (ChannelNotFound.code, "vip")
            assert (await client.publish("open", 1)).offset == 1


async def test_wss_over_tls(anyio_backend: Backend, free_tcp_port: int, tmp_path: Path) -> None:
    tls = self_signed(tmp_path)
    with anyio.fail_after(15):
        async with (
            running_server(Settings(), anyio_backend, free_tcp_port, tls=tls) as server,
            open_client(server.ws_url, ssl_context=tls.client_context()) as client,
            client.subscribe("secure") as secure,
        ):
            assert server.ws_url.startswith("wss://")
            for index in range(20):
                await client.publish("secure", index)
            assert datas(await take(secure, 20)) == list(range(20))


# The commands -------------------------------------------------------------------------


async def run_command(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``clarion ARGV...`` to its end; return its status, stdout and stderr.

    ``CLARION_TOKEN`` is removed from the environment unless *env* sets it.
    """
    environment = {k: v for k, v in os.environ.items() if k != "CLARION_TOKEN"}
    command = [str(BIN / "clarion"), *argv]
    result = await anyio.run_process(command, check=False, env={**environment, **(env or {})})
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def read_line(stream: Any, buffer: bytearray) -> str:
    """Read one line from a process's byte stream."""
    while b"\n" not in buffer:
        buffer += await stream.receive()
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def test_the_publish_and_subscribe_commands_speak_json_lines(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(channels=[ChannelRule(match="*", history=History(size=10))])
    with anyio.fail_after(30):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            url = ["--url", server.ws_url]
            argv = [str(BIN / "clarion"), "subscribe", "news", "other", *url, "--count", "3"]
            async with await anyio.open_process(argv) as subscriber:
                assert subscriber.stderr is not None
                assert subscriber.stdout is not None
                errors = bytearray()
                started = [await read_line(subscriber.stderr, errors) for _ in range(2)]
                assert started[0].startswith("clarion: subscribed to news at 0:")
                epoch = started[0].rpartition(":")[2]
                status, out, _ = await run_command("publish", "news", '{"text": "hi"}', *url)
                assert (status, msgspec.json.decode(out)) == (0, {"offset": 1, "epoch": epoch})
                assert (await run_command("publish", "other", "[1,2]", *url))[0] == 0
                assert (await run_command("publish", "news", "3", *url))[0] == 0
                output = await subscriber.stdout.receive()
                while output.count(b"\n") < 3:
                    output += await subscriber.stdout.receive()
                assert await subscriber.wait() == 0
            lines = [msgspec.json.decode(line) for line in output.splitlines()]
            assert [(line["channel"], line["data"]) for line in lines] == [
                ("news", {"text": "hi"}),
                ("other", [1, 2]),
                ("news", 3),
            ]
            assert lines[0] == {
                "channel": "news",
                "offset": 1,
                "epoch": epoch,
                "data": {"text": "hi"},
            }
            assert list(lines[2]) == ["channel", "offset", "epoch", "data"]
            # --since replays what the channel kept after that position.
            status, out, _ = await run_command(
                "subscribe", "news", *url, "--since", f"1:{epoch}", "--count", "1"
            )
            assert (status, msgspec.json.decode(out)["data"]) == (0, 3)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_the_subscribe_command_exits_0_on_a_signal(
    anyio_backend: Backend, free_tcp_port: int, signum: signal.Signals
) -> None:
    with anyio.fail_after(30):
        async with running_server(Settings(), anyio_backend, free_tcp_port) as server:
            argv = [str(BIN / "clarion"), "subscribe", "news", "--url", server.ws_url]
            async with await anyio.open_process(argv) as subscriber:
                assert subscriber.stderr is not None
                line = await read_line(subscriber.stderr, bytearray())
                assert line.startswith("clarion: subscribed to news")
                subscriber.send_signal(signum)
                assert await subscriber.wait() == 0


async def test_the_commands_report_refusals_with_their_code(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(channels=[ChannelRule(match="news")])
    with anyio.fail_after(30):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            url = ["--url", server.ws_url]
            status, out, err = await run_command("subscribe", "weather", *url)
            assert (status, out) == (1, "")
            assert err == "clarion: error: 201 no channel rule matches 'weather'\n"
            status, _, err = await run_command("publish", "weather", "1", *url)
            assert (status, err) == (1, "clarion: error: 201 no channel rule matches 'weather'\n")
            status, _, err = await run_command("publish", "news", "{not json", *url)
            assert status == 2
            assert err.startswith("clarion: error: DATA is not JSON")
        status, _, err = await run_command("publish", "news", "1", *url)
        assert status == 1
        assert err.startswith(f"clarion: error: 1006 cannot connect to {server.ws_url}")


async def test_the_commands_take_a_token_from_the_environment(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=OPEN_API, auth=AuthSettings(required=True, secret=SECRET))
    with anyio.fail_after(30):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            url = ["--url", server.ws_url]
            status, out, _ = await run_command(
                "publish", "news", "1", *url, env={"CLARION_TOKEN": token(seconds=60)}
            )
            assert (status, msgspec.json.decode(out)["offset"]) == (0, 1)
            status, _, err = await run_command("publish", "news", "1", *url)
            assert status == 1
            assert err.startswith("clarion: error: 108 HTTP 401: ")
