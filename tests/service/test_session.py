"""Clarion's protocol on one connection, without a WebSocket: a `Session` handles frames
on an engine `Connection`, and what it queues is what the client would read."""

from __future__ import annotations

from collections import Counter
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from channels.config import ChannelRule, History
from channels.hub import open_hub
from service.protocol import WireEncoding
from service.session import Session
from service.settings import Settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

CONFIG = Settings(
    channels=[
        ChannelRule(match="secret:*", private=True),
        ChannelRule(match="*", history=History(size=10)),
    ]
)


class Client:
    """The client's end: every frame the connection sends, decoded."""

    def __init__(self) -> None:
        self.objects: list[Any] = []
        self._arrived = anyio.Event()

    async def send_text(self, data: str) -> None:
        decoded = msgspec.json.decode(data)
        self.objects.extend(decoded if isinstance(decoded, list) else [decoded])
        self._arrived.set()

    async def next(self) -> Any:
        with anyio.fail_after(5):
            while not self.objects:
                await self._arrived.wait()
                self._arrived = anyio.Event()
        return self.objects.pop(0)


@asynccontextmanager
async def session(**options: Any) -> AsyncIterator[tuple[Session, Client]]:
    client = Client()
    async with open_hub(CONFIG, WireEncoding()) as hub:
        with hub.connect(client, on_end=lambda: None) as connection:
            yield Session(connection, **options), client


async def test_each_request_is_answered_with_its_id() -> None:
    async with session() as (handling, client):
        await handling.handle('{"type":"ping","id":"p1"}')
        assert await client.next() == {"type": "reply", "id": "p1"}
        await handling.handle(b'{"type":"subscribe","id":2,"channel":"room"}')
        reply = await client.next()
        assert (reply["id"], reply["channel"], reply["offset"]) == (2, "room", 0)


async def test_a_publisher_subscribed_to_the_channel_gets_its_message_before_the_reply() -> None:
    async with session() as (handling, client):
        await handling.handle('{"type":"subscribe","id":1,"channel":"room"}')
        await client.next()
        await handling.handle('{"type":"publish","id":2,"channel":"room","data":{"n":1}}')
        message, reply = await client.next(), await client.next()
        assert (message["type"], message["offset"], message["data"]) == ("message", 1, {"n": 1})
        assert (reply["type"], reply["id"], reply["offset"]) == ("reply", 2, 1)
        await handling.handle('{"type":"history","id":3,"channel":"room"}')
        assert (await client.next())["messages"] == [{"offset": 1, "data": {"n": 1}}]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{", 100),
        ('{"type":"subscribe","id":1}', 101),
        ('{"type":"jump","id":1}', 102),
        ('{"type":"subscribe","id":1,"channel":"no spaces"}', 200),
        ('{"type":"subscribe","id":1,"channel":"secret:1"}', 202),
        ('{"type":"unsubscribe","id":1,"channel":"room"}', 204),
        # No token checker: a refresh or a subscription token cannot verify.
        ('{"type":"refresh","id":1,"token":"t"}', 109),
        ('{"type":"history","id":1,"channel":"secret:1","token":"t"}', 109),
    ],
    ids=["json", "message", "op", "name", "private", "unsubscribed", "refresh", "token"],
)
async def test_a_refused_request_gets_its_code_and_the_connection_stays(
    frame: str, code: int
) -> None:
    errors: Counter[int] = Counter()
    async with session(errors=errors) as (handling, client):
        await handling.handle(frame)
        error = await client.next()
        assert (error["type"], error["code"]) == ("error", code)
        assert errors[code] == 1
        await handling.handle('{"type":"ping","id":9}')
        assert await client.next() == {"type": "reply", "id": 9}


async def test_publishing_beyond_the_burst_is_refused_until_the_rate_refills() -> None:
    async with session(publish_rate=0.001, publish_burst=2) as (handling, client):
        for request_id in range(3):
            publish = {"type": "publish", "id": request_id, "channel": "room", "data": 1}
            await handling.handle(msgspec.json.encode(publish))
        replies = [await client.next() for _ in range(3)]
        assert [reply["type"] for reply in replies] == ["reply", "reply", "error"]
        assert replies[2]["code"] == 114
