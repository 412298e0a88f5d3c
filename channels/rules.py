"""Channel names and the rule that applies to each one."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, TypeAlias

import msgspec

from channels.config import CHANNEL_NAME_CHARS
from channels.errors import ChannelNotFound, InvalidChannelName, PermissionDenied
from channels.shapes import DataCheck

if TYPE_CHECKING:
    from channels.config import Access, ChannelRule, Config, SlowConsumerPolicy


class Grant(msgspec.Struct, frozen=True, gc=False):
    """What a connection may do: its user, and the channels its token lists."""

    user: str | None = None
    channels: frozenset[str] = frozenset()


__all__ = ("Action", "Grant", "RuleBook")

Action: TypeAlias = Literal["subscribe", "publish"]
"""What a rule's access decides: ``subscribe`` also stands for every read of a channel's
content or members (history, presence, recovery)."""

_NAME = re.compile(f"[{CHANNEL_NAME_CHARS}]+")


class RuleBook:
    """Find the rule of a channel: an exact ``match`` first, then patterns in file order.

    A channel whose name starts with one of *private_prefixes* is private whatever its
    rule says, and one with a *presence_prefixes* prefix keeps presence and sends join
    and leave events too: the names
    by which a wire protocol (Pusher's ``private-`` and ``presence-``) promises its
    clients that a channel needs an authorization.
    """

    def __init__(
        self,
        config: Config,
        *,
        private_prefixes: tuple[str, ...] = (),
        presence_prefixes: tuple[str, ...] = (),
    ) -> None:
        self._private_prefixes = private_prefixes + presence_prefixes
        self._presence_prefixes = presence_prefixes
        self._by_name: dict[tuple[str, bool], ChannelRule] = {}
        self._max_length = config.server.channel_name_max_length
        self._default_policy: SlowConsumerPolicy = config.server.slow_consumer
        self._exact = {rule.match: rule for rule in config.channels if "*" not in rule.match}
        self._patterns = [
            (re.compile("(.*)".join(map(re.escape, rule.match.split("*")))), rule)
            for rule in config.channels
            if "*" in rule.match
        ]
        self._pattern_of = {rule.match: pattern for pattern, rule in self._patterns}
        self._shapes = {
            rule.match: DataCheck(rule.data) for rule in config.channels if rule.data is not None
        }

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
                channel, "use 1 or more letters, digits and '_-:.@/=+,;' characters"
            )
        rule = self._exact.get(channel)
        if rule is None:
            rule = self._pattern_rule(channel)
        if self._private_prefixes and channel.startswith(self._private_prefixes):
            return self._by_prefix(rule, presence=channel.startswith(self._presence_prefixes))
        return rule

    def _pattern_rule(self, channel: str) -> ChannelRule:
        for pattern, rule in self._patterns:
            if pattern.fullmatch(channel):
                return rule
        raise ChannelNotFound(channel)

    def _by_prefix(self, rule: ChannelRule, *, presence: bool) -> ChannelRule:
        """*rule*, private (and keeping presence) as its channel's name says."""
        if rule.private and (not presence or (rule.presence and rule.join_leave)):
            return rule
        key = (rule.match, presence)
        found = self._by_name.get(key)
        if found is None:
            found = self._by_name[key] = msgspec.structs.replace(
                rule,
                private=True,
                presence=rule.presence or presence,
                join_leave=rule.join_leave or presence,
            )
        return found

    def check(
        self, rule: ChannelRule, channel: str, action: Action, grant: Grant, *, private_ok: bool
    ) -> None:
        """Make sure *grant* may *action* (``subscribe`` or ``publish``) on *channel*.

        Raises:
            PermissionDenied: with the reason.
        """
        if action == "subscribe":
            access: Access | bool = rule.subscribe
            if rule.private and not private_ok:
                raise PermissionDenied(channel, action, "private: send a subscription token")
        else:
            access = rule.publish
        if access is True or access == "anyone":
            return
        if access is False:
            raise PermissionDenied(channel, action)
        if grant.user is None:
            raise PermissionDenied(channel, action, "authenticate first")
        if access == "granted" and channel not in grant.channels:
            raise PermissionDenied(channel, action, "your token does not list this channel")
        if access == "owner":
            found = self._pattern_of[rule.match].fullmatch(channel)
            if found is None or found[1] != grant.user:
                raise PermissionDenied(channel, action, "only its owner may")

    def check_data(self, rule: ChannelRule, channel: str, data: msgspec.Raw) -> None:
        """Make sure a message's encoded *data* has the shape *rule* declares, if any.

        Raises:
            InvalidData: naming the first field that does not fit.
        """
        shape = self._shapes.get(rule.match)
        if shape is not None:
            shape.check(channel, data)

    def policy(self, rule: ChannelRule) -> SlowConsumerPolicy:
        """Return the slow-consumer policy that applies on *rule*'s channels."""
        return rule.slow_consumer or self._default_policy
