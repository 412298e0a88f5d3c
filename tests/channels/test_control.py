"""The bans a hub holds: replaced by a later ban, lifted by a past one, forgotten when over."""

from __future__ import annotations

import time

from channels.control import Bans, Disconnect


def ban(user: str, seconds: float) -> Disconnect:
    return Disconnect(user=user, code=4003, reason="r", until=time.time() + seconds)


def test_a_later_ban_replaces_an_earlier_one_and_a_past_one_lifts_it() -> None:
    bans = Bans()
    long = ban("mallory", 3600)
    bans.apply(long)
    assert bans.of("mallory") == long
    short = ban("mallory", 60)
    bans.apply(short)
    assert bans.of("mallory") == short  # shortened, not kept at the longer
    bans.apply(ban("mallory", -1))
    assert bans.of("mallory") is None
    assert bans.of("nobody") is None


def test_bans_that_are_over_do_not_pile_up() -> None:
    bans = Bans()
    for index in range(100):
        bans.apply(ban(f"u{index}", 0.01))
    time.sleep(0.05)  # every one of those is over
    bans.apply(ban("last", 60))
    assert len(bans) == 1
