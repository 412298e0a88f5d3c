"""Channel names and the rule that applies to each one."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from channels.config import CHANNEL_NAME_CHARS
from channels.errors import ChannelNotFound, InvalidChannelName

if TYPE_CHECKING:
    from channels.config import ChannelRule, Config, SlowConsumerPolicy

__all__ = ("RuleBook",)

_NAME = re.compile(f"[{CHANNEL_NAME_CHARS}]+")


class RuleBook:
    """Find the rule of a channel: an exact ``match`` first, then patterns in file order."""

    def __init__(self, config: Config) -> None:
        self._max_length = config.server.channel_name_max_length
        self._default_policy: SlowConsumerPolicy = config.server.slow_consumer
        self._exact = {rule.match: rule for rule in config.channels if "*" not in rule.match}
        self._patterns = [
            (re.compile(".*".join(map(re.escape, rule.match.split("*")))), rule)
            for rule in config.channels
            if "*" in rule.match
        ]

    def resolve(self, channel: str) -> ChannelRule:
        """Return the rule for *channel*.

        Raises:
            InvalidChannelName: if the name is empty, too long or has a disallowed character.
            ChannelNotFound: if no rule matches.
        """
        if len(channel) > self._max_length:
            raise InvalidChannelName(channel, f"longer than {self._max_length} characters")
        if not _NAME.fullmatch(channel):
            raise InvalidChannelName(
                channel, "use 1 or more letters, digits and '_-:.@/=+' characters"
            )
        rule = self._exact.get(channel)
        if rule is not None:
            return rule
        for pattern, rule in self._patterns:
            if pattern.fullmatch(channel):
                return rule
        raise ChannelNotFound(channel)

    def policy(self, rule: ChannelRule) -> SlowConsumerPolicy:
        """Return the slow-consumer policy that applies on *rule*'s channels."""
        return rule.slow_consumer or self._default_policy
