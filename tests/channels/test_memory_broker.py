from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from channels.brokers.memory import MemoryBroker
from channels.config import History
from tests.support.data import raw
from tests.support.receiver import Recorder

if TYPE_CHECKING:
    from channels.publication import Publication

NO_HISTORY = History()


def broker() -> tuple[MemoryBroker, list[Publication]]:
    receiver = Recorder()
    return MemoryBroker(receiver), receiver.delivered


async def test_publish_delivers_in_offset_order() -> None:
    memory, delivered = broker()
    await memory.subscribe("c")
    positions = [(await memory.publish("c", raw(index), NO_HISTORY)).position for index in range(3)]
    assert [position.offset for position in positions] == [1, 2, 3]
    assert len({position.epoch for position in positions}) == 1
    assert [(item.offset, bytes(item.data)) for item in delivered] == [
        (1, b"0"),
        (2, b"1"),
        (3, b"2"),
    ]


async def test_an_idle_stream_is_forgotten_and_restarts_with_a_new_epoch() -> None:
    memory, _ = broker()
    first = (await memory.publish("c", raw(1), NO_HISTORY)).position
    assert memory.stream_count == 0
    second = (await memory.publish("c", raw(1), NO_HISTORY)).position
    assert second.offset == 1
    assert second.epoch != first.epoch


async def test_a_subscribed_stream_keeps_counting() -> None:
    memory, _ = broker()
    await memory.subscribe("c")
    await memory.publish("c", raw(1), NO_HISTORY)
    assert (await memory.publish("c", raw(1), NO_HISTORY)).position.offset == 2
    memory.unsubscribe("c")
    assert memory.stream_count == 0
    memory.unsubscribe("never-subscribed")


async def test_history_is_trimmed_by_size() -> None:
    memory, _ = broker()
    for index in range(3):
        await memory.publish("c", raw(index), History(size=2))
    page = await memory.read("c", after=None, epoch=None, limit=None)
    assert [item.offset for item in page.publications] == [2, 3]
    assert memory.stream_count == 1  # kept messages keep the stream


async def test_history_expires_by_age() -> None:
    memory, _ = broker()
    await memory.publish("c", raw("old"), History(size=10, ttl_seconds=0.05))
    await anyio.sleep(0.1)  # let the message age past its time to live
    await memory.publish("c", raw("new"), History(size=10, ttl_seconds=0.05))
    page = await memory.read("c", after=0, epoch=None, limit=None)
    assert [bytes(item.data) for item in page.publications] == [b'"new"']
    assert not page.complete


async def test_read_of_an_unknown_channel_is_empty() -> None:
    memory, _ = broker()
    page = await memory.read("nothing", after=None, epoch=None, limit=5)
    assert (page.position.offset, page.publications, page.complete) == (0, [], True)
    page = await memory.read("nothing", after=3, epoch="e", limit=5)
    assert not page.complete
