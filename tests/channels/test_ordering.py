"""The Redis broker's ordering decisions, without Redis: each pub/sub message delivered
once and in offset order, every gap repaired from the stream or reported lost."""

from __future__ import annotations

import msgspec
import pytest

from channels.brokers.ordering import ChannelOrder, Check, Lost, Step, parse_message
from channels.publication import Publication


def message(offset: int, epoch: str = "e1") -> bytes:
    return f"{epoch}:{offset}:{offset * 10}".encode()


def kept(*offsets: int) -> list[Publication]:
    """What the stream still keeps, as the read script returns it."""
    return [Publication("c", offset, msgspec.Raw(b"%d" % (offset * 10))) for offset in offsets]


def started(last: int = 0) -> ChannelOrder:
    order = ChannelOrder()
    assert order.start(b"e1", last) == []
    return order


def test_a_message_splits_into_epoch_offset_and_data() -> None:
    assert parse_message(b'e1:12:{"a":1}') == (b"e1", 12, b'{"a":1}')
    assert parse_message(b"e1:3:a:b") == (b"e1", 3, b"a:b")  # data may hold ':'
    with pytest.raises(ValueError, match="invalid literal"):
        parse_message(b"nonsense")


def test_messages_before_the_start_is_known_are_held_then_received_again() -> None:
    order = ChannelOrder()
    assert order.receive(message(4)) == Step()
    assert order.receive(message(5)) == Step()
    held = order.start(b"e1", 4)  # the stream's top when the subscription started
    assert held == [message(4), message(5)]
    assert [order.receive(item) for item in held] == [Step(), Step(deliver=(5, b"50"))]
    assert order.last == 5


def test_in_order_messages_are_delivered_and_repeats_dropped() -> None:
    order = started()
    assert order.receive(message(1)) == Step(deliver=(1, b"10"))
    assert order.receive(message(2)) == Step(deliver=(2, b"20"))
    assert order.receive(message(2)) == Step()  # already delivered (from the stream)
    assert order.repair_range() is None


def test_a_gap_holds_what_follows_until_the_stream_fills_it() -> None:
    order = started(last=2)
    assert order.receive(message(6)) == Step(repair=True)
    assert order.receive(message(7)) == Step()  # held behind the gap
    assert order.repair_range() == (2, 3)  # after 2, at most 3: offsets 3 to 5
    # The stream still keeps 4 and 5: 3 is lost, reported before 4.
    found, held = order.repaired(b"e1", kept(4, 5))
    assert found == [Lost(3, 3), *kept(4, 5)]
    assert held == [message(6), message(7)]
    assert [order.receive(item) for item in held] == [
        Step(deliver=(6, b"60")),
        Step(deliver=(7, b"70")),
    ]


def test_a_repair_reports_lost_what_the_stream_no_longer_keeps() -> None:
    order = started(last=1)
    order.receive(message(5))
    assert order.repair_range() == (1, 3)
    found, _ = order.repaired(b"e1", [])
    assert found == [Lost(2, 4)]
    assert order.last == 4


def test_a_repair_of_a_stream_that_restarted_meanwhile_reports_everything_lost() -> None:
    order = started(last=1)
    order.receive(message(4))
    assert order.repair_range() == (1, 2)
    found, held = order.repaired(b"e2", kept(2, 3))
    assert found == [Lost(2, 3)]
    assert held == [message(4)]


def test_a_new_epoch_restarts_the_offsets() -> None:
    order = started(last=9)
    assert order.receive(message(1, "e2")) == Step(b"e2", deliver=(1, b"10"))
    assert (order.epoch, order.last) == (b"e2", 1)
    other = started(last=9)
    assert other.receive(message(3, "e2")) == Step(b"e2", repair=True)
    assert other.repair_range() == (0, 2)


def test_a_check_finds_what_arrived_nowhere_since_the_previous_check() -> None:
    order = started(last=3)
    assert order.check(b"e1", 5) == Check.NOTHING  # 4 and 5 may still be on their way
    assert order.check(b"e1", 5) == Check.REPAIR  # they were published a check ago
    assert order.repair_range() == (3, 2)
    found, held = order.repaired(b"e1", kept(4, 5))
    assert (found, held, order.last) == (kept(4, 5), [], 5)
    assert order.check(b"e1", 5) == Check.NOTHING


def test_a_check_that_finds_a_new_epoch_restarts_and_reads_it_next_time() -> None:
    order = started(last=7)
    assert order.check(b"e2", 2) == Check.RESTARTED
    assert (order.epoch, order.last) == (b"e2", 0)
    assert order.check(b"e2", 2) == Check.REPAIR
    assert order.repair_range() == (0, 2)


def test_nothing_is_checked_while_messages_are_held() -> None:
    order = ChannelOrder()
    assert order.check(b"e2", 9) == Check.NOTHING
    assert order.epoch == b""


def test_a_malformed_message_is_refused_even_while_messages_are_held() -> None:
    # Held, it would fail only once released, inside the repair that releases it.
    order = ChannelOrder()
    with pytest.raises(ValueError, match="invalid literal"):
        order.receive(b"e1:x:data")
    assert order.start(b"e1", 0) == []


def test_a_message_held_during_a_repair_does_not_widen_what_it_reports_lost() -> None:
    # A check's repair reads 8-10; 14 arrives meanwhile. 11-13 were not read: they are
    # the next repair's to find, not lost.
    order = started(last=7)
    order.check(b"e1", 10)
    assert order.check(b"e1", 10) == Check.REPAIR
    assert order.repair_range() == (7, 3)
    assert order.receive(message(14)) == Step()  # held behind the repair
    found, held = order.repaired(b"e1", kept(8, 9, 10))
    assert (found, held) == (kept(8, 9, 10), [message(14)])
    assert order.receive(held[0]) == Step(repair=True)
    assert order.repair_range() == (10, 3)
