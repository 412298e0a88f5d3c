"""Several Clarion nodes sharing channels through a real redis-server.

One node runs in this process on the test's backend; the other is a ``clarion serve``
process on the same backend or on the other one (the mixed pair).
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from channels.config import BrokerConfig, ChannelRule, History
from service.settings import Settings
from tests.integration.test_commands import process
from tests.support.redis import RedisServer, free_port
from tests.support.server import Server, http_call, http_publish, running_server
from tests.support.wsclient import connect, subscribe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from service.runner import Backend

BIN = Path(sys.executable).parent
OTHER: dict[str, Backend] = {"asyncio": "trio", "trio": "asyncio"}


@asynccontextmanager
async def two_nodes(
    backend: Backend, pair: str, broker: BrokerConfig, tmp_path: Path
) -> AsyncIterator[tuple[Server, Server]]:
    """Node A in this process on *backend*; node B a ``clarion serve`` process."""
    rules = [
        ChannelRule(match="room:*", presence=True, join_leave=True),
        ChannelRule(match="*", history=History(size=100)),
    ]
    config = Settings(broker=broker, channels=rules)
    path = tmp_path / "channels.yaml"
    path.write_bytes(msgspec.yaml.encode(msgspec.to_builtins(config)))
    other = backend if pair == "same" else OTHER[backend]
    port_a, port_b = free_port(), free_port()
    argv = [str(BIN / "clarion"), "serve", "--config", str(path), "--backend", other]
    async with (
        running_server(config, backend, port_a) as a,
        process([*argv, "--bind", f"127.0.0.1:{port_b}"], port_b, tmp_path / "b.log") as proc,
    ):
        yield a, Server("127.0.0.1", port_b, process=proc)


@pytest.mark.parametrize("pair", ["same", "mixed"])
async def test_a_thousand_messages_reach_every_node_in_order(
    anyio_backend: Backend, pair: str, redis_broker: BrokerConfig, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with (
            two_nodes(anyio_backend, pair, redis_broker, tmp_path) as (a, b),
            connect(a.ws_url) as on_a,
            connect(b.ws_url) as on_b,
            connect(b.ws_url) as publisher,
        ):
            await subscribe(on_a, "busy")
            await subscribe(on_b, "busy")
            for index in range(1000):  # pipelined: replies are read afterwards
                await publisher.send_json(
                    {"type": "publish", "id": index, "channel": "busy", "data": index}
                )
            replies = [await publisher.receive_object() for _ in range(1000)]
            assert [reply["offset"] for reply in replies] == list(range(1, 1001))
            for client in (on_a, on_b):
                got = [await client.receive_object() for _ in range(1000)]
                assert [message["data"] for message in got] == list(range(1000))
                assert [message["offset"] for message in got] == list(range(1, 1001))


@pytest.mark.parametrize("pair", ["same", "mixed"])
async def test_a_client_recovers_on_another_node_what_it_missed(
    anyio_backend: Backend, pair: str, redis_broker: BrokerConfig, tmp_path: Path
) -> None:
    with anyio.fail_after(30):
        async with two_nodes(anyio_backend, pair, redis_broker, tmp_path) as (a, b):
            async with connect(a.ws_url) as reader:
                epoch = (await subscribe(reader, "feed"))["epoch"]
                for index in range(3):
                    await http_publish(a, "feed", index)
                seen = [await reader.receive_object() for _ in range(3)]
            for index in range(3, 8):
                await http_publish(a, "feed", index)
            async with connect(b.ws_url) as reader:
                since = {"offset": seen[-1]["offset"], "epoch": epoch}
                reply = await subscribe(reader, "feed", since=since)
                assert (reply["recovered"], reply["offset"], reply["epoch"]) == (True, 8, epoch)
                await http_publish(a, "feed", "live")
                got = [await reader.receive_object() for _ in range(6)]
                assert [message["data"] for message in got] == [3, 4, 5, 6, 7, "live"]
                assert [message["offset"] for message in got] == list(range(4, 10))
            async with connect(b.ws_url) as stranger:
                reply = await subscribe(stranger, "feed", since={"offset": 2, "epoch": "old"})
                assert reply["recovered"] is False


async def test_live_messages_racing_the_replay_arrive_once_and_in_order(
    anyio_backend: Backend, redis_broker: BrokerConfig, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with (
            two_nodes(anyio_backend, "mixed", redis_broker, tmp_path) as (a, b),
            connect(a.ws_url) as publisher,
        ):
            async with connect(a.ws_url) as reader:
                epoch = (await subscribe(reader, "race"))["epoch"]
            stop = anyio.Event()

            async def flood() -> None:
                index = 0
                while not stop.is_set():
                    await publisher.request({"type": "publish", "channel": "race", "data": index})
                    index += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(flood)
                seen = 0
                for round_ in range(5):
                    # Resubscribe a little behind on the other node while messages flow:
                    # the replay and the live messages must join without a gap or repeat.
                    async with connect((b, a)[round_ % 2].ws_url) as reader:
                        since = {"offset": max(0, seen - 10), "epoch": epoch}
                        reply = await subscribe(reader, "race", since=since)
                        assert reply["recovered"] is True, round_
                        expected = since["offset"] + 1
                        while expected <= reply["offset"] + 20:
                            assert (await reader.receive_object())["offset"] == expected
                            expected += 1
                        seen = expected - 1
                stop.set()


# coredis 6.9 leaves the memory streams of a connection that never connected unclosed.
@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_a_node_rides_out_a_redis_restart(
    anyio_backend: Backend, own_redis: RedisServer
) -> None:
    own_redis.start()
    broker = BrokerConfig(kind="redis", url=own_redis.url, timeout_seconds=0.5, check_seconds=0.05)
    with anyio.fail_after(60):
        async with (
            running_server(Settings(broker=broker), anyio_backend, free_port()) as node,
            connect(node.ws_url) as client,
        ):
            await wait_ready(node, 200)
            await subscribe(client, "news")
            await http_publish(node, "news", "before")
            assert (await client.receive_object())["offset"] == 1
            own_redis.stop()
            await wait_ready(node, 503)
            assert (await http_call(node, "GET", "/ready"))[1]["reason"] == "broker unavailable"
            body = msgspec.json.encode({"channel": "news", "data": "during"})
            status, refused = await http_call(node, "POST", "/api/publish", body)
            assert (status, refused["code"]) == (503, 301)
            assert (await http_call(node, "GET", "/health"))[0] == 200
            own_redis.start()
            await wait_ready(node, 200)
            # The client stayed connected; Redis kept nothing, so the stream restarts.
            epoch = (await http_publish(node, "news", "after"))["epoch"]
            assert await client.receive_object() == {
                "type": "restart",
                "channel": "news",
                "epoch": epoch,
            }
            message = await client.receive_object()
            assert (message["offset"], message["data"]) == (1, "after")


async def wait_ready(node: Server, status: int) -> None:
    while (await http_call(node, "GET", "/ready"))[0] != status:  # noqa: ASYNC110 - polls HTTP
        await anyio.sleep(0.02)


@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_a_node_starts_while_redis_is_down(
    anyio_backend: Backend, own_redis: RedisServer
) -> None:
    broker = BrokerConfig(kind="redis", url=own_redis.url, timeout_seconds=0.5, check_seconds=0.05)
    with anyio.fail_after(60):
        async with (
            running_server(Settings(broker=broker), anyio_backend, free_port()) as node,
            connect(node.ws_url) as client,
        ):
            assert (await http_call(node, "GET", "/health"))[0] == 200
            assert (await http_call(node, "GET", "/ready"))[0] == 503
            refused = await client.request({"type": "subscribe", "id": 1, "channel": "c"})
            assert (refused["type"], refused["code"]) == ("error", 301)
            own_redis.start()
            await wait_ready(node, 200)
            await subscribe(client, "c")
            await http_publish(node, "c", "hello")
            assert (await client.receive_object())["data"] == "hello"


#: The period of the readiness checks in the recovery tests below.
CHECK_SECONDS = 0.2
#: Readiness must follow Redis's recovery within this many check periods: about two
#: suffice (a pub/sub reconnect, capped at one period, then a ping), the rest is margin
#: for a busy machine. Waiting out a check sent before pub/sub reconnected, as nodes
#: once did, takes ``timeout_seconds`` and more.
RECOVERY_CHECKS = 10


async def seconds_until_ready(node: Server) -> float:
    """Wait until ``GET /ready`` answers 200; return how long that took."""
    started = anyio.current_time()
    await wait_ready(node, 200)
    return anyio.current_time() - started


@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_readiness_follows_redis_out_of_a_stall_within_a_few_checks(
    anyio_backend: Backend, own_redis: RedisServer
) -> None:
    own_redis.start()
    assert own_redis.process is not None
    broker = BrokerConfig(
        kind="redis", url=own_redis.url, timeout_seconds=1, check_seconds=CHECK_SECONDS
    )
    with anyio.fail_after(60):
        async with (
            running_server(Settings(broker=broker), anyio_backend, free_port()) as node,
            connect(node.ws_url) as client,
        ):
            await wait_ready(node, 200)
            await subscribe(client, "news")
            await http_publish(node, "news", "before")
            assert (await client.receive_object())["data"] == "before"
            os.kill(own_redis.process.pid, signal.SIGSTOP)
            try:
                await wait_ready(node, 503)
                # Cut short by timeout_seconds, while checks keep pinging the stalled Redis:
                # Redis will still run all of them, and their late replies must go to the
                # calls that gave up on them, never to the next ones.
                body = msgspec.json.encode({"channel": "news", "data": "during"})
                status, refused = await http_call(node, "POST", "/api/publish", body)
                assert (status, refused["code"]) == (503, 301)
                assert (await http_call(node, "GET", "/ready"))[0] == 503
            finally:
                os.kill(own_redis.process.pid, signal.SIGCONT)
            took = await seconds_until_ready(node)
            assert took < RECOVERY_CHECKS * CHECK_SECONDS, f"ready {took:.2f}s after the stall"
            after = await http_publish(node, "news", "after")
            received = [await client.receive_object()]
            while received[-1]["data"] != "after":
                received.append(await client.receive_object())
            # The refused publish may still have run once Redis resumed (docs/deployment.md:
            # "A publish that timed out may still have been applied"); nothing else came in
            # between.
            assert [message["data"] for message in received] in (["during", "after"], ["after"])
            assert [message["offset"] for message in received] == list(
                range(after["offset"] - len(received) + 1, after["offset"] + 1)
            )


@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_readiness_follows_a_redis_restart_within_a_few_checks(
    anyio_backend: Backend, own_redis: RedisServer
) -> None:
    own_redis.start()
    # A long timeout: a node that waited for a check sent before pub/sub reconnected
    # would stay not ready this long after Redis came back.
    broker = BrokerConfig(
        kind="redis", url=own_redis.url, timeout_seconds=5, check_seconds=CHECK_SECONDS
    )
    with anyio.fail_after(60):
        async with running_server(Settings(broker=broker), anyio_backend, free_port()) as node:
            await wait_ready(node, 200)
            for _ in range(2):  # the pub/sub's reconnect backoff only ever grows
                await anyio.to_thread.run_sync(own_redis.stop)
                await wait_ready(node, 503)
                await anyio.sleep(1)  # the outage lasts: pub/sub retries and backs off
                await anyio.to_thread.run_sync(own_redis.start)
                took = await seconds_until_ready(node)
                assert took < RECOVERY_CHECKS * CHECK_SECONDS, f"ready {took:.2f}s after restart"
                await http_publish(node, "news", "after")


def worker_pids(parent: int) -> list[int]:
    """The worker processes *parent* spawned (not multiprocessing's helpers)."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


async def test_workers_share_channels_through_redis(
    anyio_backend: Backend, redis_broker: BrokerConfig, tmp_path: Path
) -> None:
    path = tmp_path / "channels.yaml"
    path.write_bytes(msgspec.yaml.encode({"broker": msgspec.to_builtins(redis_broker)}))
    port = free_port()
    argv = [str(BIN / "clarion"), "serve", "--config", str(path), "--workers", "3"]
    argv += ["--backend", anyio_backend, "--bind", f"127.0.0.1:{port}"]
    node = Server("127.0.0.1", port)
    with anyio.fail_after(60):
        async with process(argv, port, tmp_path / "serve.log") as proc:
            while len(worker_pids(proc.pid)) < 3:  # noqa: ASYNC110 - polls /proc
                await anyio.sleep(0.02)  # the parent listens before its workers start
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(connect(node.ws_url)) for _ in range(12)]
                for client in clients:
                    await subscribe(client, "shared")
                for index in range(3):
                    await http_publish(node, "shared", index)
                for client in clients:
                    got = [await client.receive_object() for _ in range(3)]
                    assert [message["data"] for message in got] == [0, 1, 2]
                proc.terminate()
                for client in clients:
                    assert (await client.wait_closed()).code == 1001
            assert await proc.wait() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
async def test_a_signal_while_workers_start_waits_for_them(
    anyio_backend: Backend, redis_broker: BrokerConfig, tmp_path: Path, signum: signal.Signals
) -> None:
    """Sent as soon as the workers exist (still importing), a signal is not lost and kills
    none half-started: SIGTERM and SIGINT drain every worker to exit 0, SIGHUP reloads."""
    path = tmp_path / "channels.yaml"
    path.write_bytes(msgspec.yaml.encode({"broker": msgspec.to_builtins(redis_broker)}))
    port = free_port()
    argv = [str(BIN / "clarion"), "serve", "--config", str(path), "--workers", "3"]
    argv += ["--backend", anyio_backend, "--bind", f"127.0.0.1:{port}"]
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        proc = await anyio.open_process(argv, stdout=output, stderr=output)
    with anyio.fail_after(60):
        async with proc:
            while len(worker_pids(proc.pid)) < 3:  # noqa: ASYNC110 - polls /proc
                await anyio.sleep(0.005)
            proc.send_signal(signum)
            if signum == signal.SIGHUP:
                while log.read_text().count("reloaded") < 3:  # noqa: ASYNC110 - polls a log
                    await anyio.sleep(0.05)
                proc.terminate()
            assert await proc.wait() == 0
    text = log.read_text()
    assert text.count("drained") == 3
    assert "Traceback" not in text
    assert "exited with status" not in text


async def test_presence_and_join_leave_span_nodes(
    anyio_backend: Backend, redis_broker: BrokerConfig, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with two_nodes(anyio_backend, "mixed", redis_broker, tmp_path) as (a, b):
            async with connect(a.ws_url) as alice:
                await subscribe(alice, "room:1")
                alice_id = (await alice.receive_object())["info"]["client"]  # its own join
                async with connect(b.ws_url) as bob:
                    await subscribe(bob, "room:1")
                    joined = await alice.receive_object()
                    assert (joined["type"], joined["channel"]) == ("join", "room:1")
                    bob_id = joined["info"]["client"]
                    assert joined["info"] == {"client": bob_id, "user": None}
                    reply = await alice.request({"type": "presence", "id": 7, "channel": "room:1"})
                    assert reply["id"] == 7
                    assert sorted(c["client"] for c in reply["clients"]) == sorted(
                        [alice_id, bob_id]
                    )
                    status, body = await http_call(b, "GET", "/api/presence?channel=room:1")
                    assert status == 200
                    assert len(body["clients"]) == 2
                left = await alice.receive_object()
                assert (left["type"], left["info"]["client"]) == ("leave", bob_id)
                refused = await alice.request({"type": "presence", "id": 8, "channel": "plain"})
                assert (refused["type"], refused["code"]) == ("error", 206)


async def test_the_clients_of_a_killed_node_leave_presence_and_the_channel_list(
    anyio_backend: Backend, redis_broker: BrokerConfig, tmp_path: Path
) -> None:
    broker = msgspec.structs.replace(redis_broker, presence_ttl_seconds=1.0)
    with anyio.fail_after(60):
        async with two_nodes(anyio_backend, "same", broker, tmp_path) as (a, b):
            async with connect(b.ws_url) as doomed:
                await subscribe(doomed, "room:2")
                _, body = await http_call(a, "GET", "/api/presence?channel=room:2")
                assert len(body["clients"]) == 1
                listing = "/api/channels?prefix=room:"
                while not (await http_call(a, "GET", listing))[1]["channels"]:  # noqa: ASYNC110 - the count is written by B's upkeep
                    await anyio.sleep(0.05)
                assert (await http_call(a, "GET", listing))[1]["channels"] == [
                    {"channel": "room:2", "subscribers": 1}
                ]
                assert b.process is not None
                b.process.kill()  # SIGKILL: the node cannot say goodbye
                await b.process.wait()
                started = anyio.current_time()
                path = "/api/presence?channel=room:2"
                while (await http_call(a, "GET", path))[1]["clients"]:  # noqa: ASYNC110 - expiry
                    await anyio.sleep(0.05)
                # Within presence_ttl_seconds of the last refresh; a wide margin for a busy machine.
                assert anyio.current_time() - started < 5.0
                # The dead node's channels leave the list the same way.
                while (await http_call(a, "GET", listing))[1]["channels"]:  # noqa: ASYNC110 - expiry
                    await anyio.sleep(0.05)
                assert anyio.current_time() - started < 5.0
