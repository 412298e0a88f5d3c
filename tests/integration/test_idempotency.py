"""A publisher that retries every 301 with the same idempotency key publishes each
message exactly once, even when Redis stalls and applies the first attempts late."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from channels.config import BrokerConfig, ChannelRule, History
from service.settings import Settings
from tests.integration.test_redis_nodes import wait_ready
from tests.support.redis import free_port
from tests.support.server import http_call, http_publish, running_server

if TYPE_CHECKING:
    from service.runner import Backend
    from tests.support.redis import RedisServer

PUBLISHERS = 20


async def test_publishes_retried_through_a_redis_stall_are_kept_exactly_once(
    anyio_backend: Backend, own_redis: RedisServer
) -> None:
    own_redis.start()
    assert own_redis.process is not None
    pid = own_redis.process.pid
    broker = BrokerConfig(kind="redis", url=own_redis.url, timeout_seconds=0.3, check_seconds=0.05)
    config = Settings(broker=broker, channels=[ChannelRule(match="*", history=History(size=1000))])
    replies: dict[int, dict[str, Any]] = {}
    refused: set[int] = set()
    every_one_refused = anyio.Event()

    async def publish(node: Any, number: int) -> None:
        """Publish *number*, retrying with the same key after every 301, as a backend does."""
        body = msgspec.json.encode(
            {"channel": "orders", "data": number, "idempotency_key": f"order-{number}"}
        )
        while True:
            status, reply = await http_call(node, "POST", "/api/publish", body)
            if status == 200:
                replies[number] = reply
                return
            assert (status, reply["code"]) == (503, 301), reply
            refused.add(number)
            if len(refused) == PUBLISHERS:
                every_one_refused.set()

    with anyio.fail_after(60):
        async with running_server(config, anyio_backend, free_port()) as node:
            await wait_ready(node, 200)
            await http_publish(node, "orders", "before")
            os.kill(pid, signal.SIGSTOP)  # Redis takes the commands in, and answers none
            try:
                async with anyio.create_task_group() as tg:
                    for number in range(PUBLISHERS):
                        tg.start_soon(publish, node, number)
                    # Every first attempt timed out (301) and waits inside Redis; retries
                    # pile up behind them. Then Redis applies them all, in order.
                    await every_one_refused.wait()
                    os.kill(pid, signal.SIGCONT)
            finally:
                os.kill(pid, signal.SIGCONT)
            page = await node.hub.history("orders", after=None, limit=None, trusted=True)
    kept = [msgspec.json.decode(item.data) for item in page.publications]
    assert kept[0] == "before"
    assert sorted(kept[1:]) == list(range(PUBLISHERS))  # each once: none lost, none twice
    assert [item.offset for item in page.publications] == list(range(1, PUBLISHERS + 2))
    # Every publisher was told where its message is, whichever attempt answered.
    for number, reply in replies.items():
        assert kept[reply["offset"] - 1] == number
    assert any(reply.get("duplicate") for reply in replies.values())
