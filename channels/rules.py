"""Channel names and the rule that applies to each one."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal, TypeAlias

import msgspec

from channels.config import CHANNEL_NAME_CHARS, History
from channels.errors import ChannelNotFound, InvalidChannelName, PermissionDenied
from channels.shapes import DataCheck

if TYPE_CHECKING:
    from collections.abc import Sequence

    from channels.config import Access, ChannelRule, Config, SlowConsumerPolicy


class Grant(msgspec.Struct, frozen=True, gc=False):
    """What a connection may do: its user, and the channels its token lists."""

    user: str | None = None
    channels: frozenset[str] = frozenset()


__all__ = ("Action", "Grant", "NameKind", "RuleBook")

Action: TypeAlias = Literal["subscribe", "publish"]
"""What a rule's access decides: ``subscribe`` also stands for every read of a channel's
content or members (history, presence, recovery)."""

_NAME = re.compile(f"[{CHANNEL_NAME_CHARS}]+")


class NameKind(msgspec.Struct, frozen=True, gc=False):
    """What a channel is by its name alone, whatever its rule says: the promise a wire
    protocol makes its clients (Pusher's ``private-``, ``presence-`` and ``cache-``).

    A channel whose name starts with ``prefix`` is private (subscribing needs an
    authorization, and so does publishing as a client), keeps presence of users (a user
    joins with its first connection and leaves with its last, with join and leave
    events), or keeps its last message for at least ``keep_last_seconds``, as the kind
    says.
    """

    prefix: str
    private: bool = False
    presence: bool = False
    keep_last_seconds: float = 0.0
    owned: bool = False
    """Only the user whose id follows the prefix may subscribe, and no client may
    publish (Pusher's ``#server-to-user-{id}``, where the backend sends to a user)."""


class RuleBook:
    """Find the rule of a channel: an exact ``match`` first, then patterns in file order;
    then the channel is what its name's *kinds* make it (see `NameKind`)."""

    def __init__(self, config: Config, *, kinds: Sequence[NameKind] = ()) -> None:
        self._kinds = tuple(kinds)
        self._prefixes = tuple(kind.prefix for kind in kinds)
        self._private_prefixes = tuple(
            kind.prefix for kind in kinds if kind.private or kind.presence
        )
        self._by_kind: dict[tuple[str, tuple[NameKind, ...]], ChannelRule] = {}
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
                channel, "use 1 or more letters, digits and '_-:.@/=+,;#' characters"
            )
        rule = self._exact.get(channel)
        if rule is None:
            rule = self._pattern_rule(channel)
        if self._prefixes and channel.startswith(self._prefixes):
            kinds = tuple(kind for kind in self._kinds if channel.startswith(kind.prefix))
            return self._of_kinds(rule, kinds)
        return rule

    def members_by_user(self, channel: str) -> bool:
        """Whether *channel*'s members are users rather than connections: a presence
        channel by its name (a user joins with its first connection, leaves with its
        last)."""
        return any(kind.presence and channel.startswith(kind.prefix) for kind in self._kinds)

    def _pattern_rule(self, channel: str) -> ChannelRule:
        for pattern, rule in self._patterns:
            if pattern.fullmatch(channel):
                return rule
        raise ChannelNotFound(channel)

    def _of_kinds(self, rule: ChannelRule, kinds: tuple[NameKind, ...]) -> ChannelRule:
        """*rule*, as *kinds* (those its channel's name has) make it."""
        key = (rule.match, kinds)
        found = self._by_kind.get(key)
        if found is None:
            presence = any(kind.presence for kind in kinds)
            private = presence or any(kind.private for kind in kinds)
            keep = max(kind.keep_last_seconds for kind in kinds)
            owned = any(kind.owned for kind in kinds)
            history = rule.history
            # Its last message for *keep* at least: a rule that keeps more stays.
            if keep and not history.size:
                history = History(size=1, ttl_seconds=keep)
            elif keep and history.ttl_seconds:
                history = History(size=history.size, ttl_seconds=max(history.ttl_seconds, keep))
            found = self._by_kind[key] = msgspec.structs.replace(
                rule,
                private=rule.private or private,
                presence=rule.presence or presence,
                join_leave=rule.join_leave or presence,
                history=history,
                subscribe="owner" if owned else rule.subscribe,
                publish=False if owned else rule.publish,
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
            # A channel private by its name takes messages from its authorized
            # subscribers only (and the trusted API), as the wire promises its clients.
            if (
                not private_ok
                and self._private_prefixes
                and channel.startswith(self._private_prefixes)
            ):
                raise PermissionDenied(channel, action, "private: only its authorized clients")
        if access is True or access == "anyone":
            return
        if access is False:
            raise PermissionDenied(channel, action)
        if grant.user is None:
            raise PermissionDenied(channel, action, "authenticate first")
        if access == "granted" and channel not in grant.channels:
            raise PermissionDenied(channel, action, "your token does not list this channel")
        if access == "owner" and self._owner_of(rule, channel) != grant.user:
            raise PermissionDenied(channel, action, "only its owner may")

    def _owner_of(self, rule: ChannelRule, channel: str) -> str | None:
        """The user whose channel *channel* is: what follows an owned kind's prefix, or
        what the one ``*`` of *rule*'s match stands for."""
        for kind in self._kinds:
            if kind.owned and channel.startswith(kind.prefix):
                return channel[len(kind.prefix) :]
        pattern = self._pattern_of.get(rule.match)
        found = None if pattern is None else pattern.fullmatch(channel)
        return None if found is None else found[1]

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
