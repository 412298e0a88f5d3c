from __future__ import annotations

import pytest

from channels.config import ChannelRule, Config, History, ServerConfig
from channels.errors import ChannelNotFound, InvalidChannelName
from channels.rules import NameKind, RuleBook

RULES = Config(
    server=ServerConfig(channel_name_max_length=20, slow_consumer="drop_oldest"),
    channels=[
        ChannelRule(match="chat:*", publish=True),
        ChannelRule(match="chat:announcements", publish=False),
        ChannelRule(match="*:admin", slow_consumer="latest"),
        ChannelRule(match="*"),
    ],
)


@pytest.mark.parametrize(
    ("channel", "match"),
    [
        ("chat:1", "chat:*"),
        ("chat:", "chat:*"),
        ("chat:announcements", "chat:announcements"),  # exact beats the earlier pattern
        ("chat:admin", "chat:*"),  # the first pattern in file order wins
        ("ops:admin", "*:admin"),
        ("anything", "*"),
    ],
)
def test_resolve_picks_exact_then_first_pattern(channel: str, match: str) -> None:
    assert RuleBook(RULES).resolve(channel).match == match


def test_unmatched_channel_is_not_found() -> None:
    book = RuleBook(Config(channels=[ChannelRule(match="chat:*")]))
    with pytest.raises(ChannelNotFound, match="no channel rule matches 'news'") as caught:
        book.resolve("news")
    assert caught.value.code == 201


@pytest.mark.parametrize("channel", ["", "a b", "tab\t", "é", "star*", "x" * 21])
def test_invalid_names_are_refused(channel: str) -> None:
    with pytest.raises(InvalidChannelName) as caught:
        RuleBook(RULES).resolve(channel)
    assert caught.value.code == 200


def test_policy_falls_back_to_the_server_default() -> None:
    book = RuleBook(RULES)
    assert book.policy(book.resolve("ops:admin")) == "latest"
    assert book.policy(book.resolve("chat:1")) == "drop_oldest"


def test_a_channels_name_can_make_it_private_presence_or_keep_its_last_message() -> None:
    config = Config(
        channels=[
            ChannelRule(match="presence-cache-*", history=History(size=5, ttl_seconds=60)),
            ChannelRule(match="cache-kept", history=History(size=10)),
            ChannelRule(match="*"),
        ]
    )
    kinds = [
        NameKind("private-", private=True),
        NameKind("presence-", presence=True),
        NameKind("cache-", keep_last_seconds=1800),
        NameKind("presence-cache-", keep_last_seconds=1800),
    ]
    rules = RuleBook(config, kinds=kinds)
    assert rules.resolve("news") == ChannelRule(match="*")
    private = rules.resolve("private-x")
    assert (private.private, private.presence, private.history.size) == (True, False, 0)
    presence = rules.resolve("presence-x")
    assert (presence.private, presence.presence, presence.join_leave) == (True, True, True)
    cache = rules.resolve("cache-x")
    assert (cache.private, cache.history) == (False, History(size=1, ttl_seconds=1800))
    # Every kind a name has applies; a rule's longer history stays, its TTL at least
    # the kind's.
    both = rules.resolve("presence-cache-x")
    assert (both.private, both.presence) == (True, True)
    assert both.history == History(size=5, ttl_seconds=1800)
    assert both.match == "presence-cache-*"
    # A rule that keeps its messages until others push them out keeps them so.
    assert rules.resolve("cache-kept").history == History(size=10)
    # Without kinds, a name is only what its rule says.
    assert not RuleBook(config).resolve("private-x").private
