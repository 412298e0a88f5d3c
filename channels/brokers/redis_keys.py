"""Where the Redis broker keeps each channel, under the configured ``prefix`` ``P``.

- ``P:m:CHANNEL`` is a hash with the stream's ``epoch``, its ``top`` offset and the
  history's ``ttl`` in milliseconds;
- ``P:s:CHANNEL`` is a Redis stream of the kept messages: entry ID ``OFFSET-0``, fields
  ``d`` (the data) and ``t`` (Redis's clock when it was published, in milliseconds);
- ``P:p:CHANNEL`` is the pub/sub channel; each message reads ``EPOCH:OFFSET:DATA``, or
  ``!j``/``!l`` and a client's JSON for a join or leave event;
- ``P:i:CHANNEL#KEY`` holds ``OFFSET:EPOCH`` of the publish with idempotency key ``KEY``
  for the idempotency window;
- ``P:pr:CHANNEL`` (a hash) and ``P:pz:CHANNEL`` (a sorted set of expiry times) hold
  the channel's presence, client by client;
- ``P:n:NODE`` is one node's own pub/sub channel, for its readiness checks;
- ``P:nodes`` is a sorted set of the live nodes (by when they expire), and
  ``P:nc:NODE`` a hash of one node's subscriber count per channel, for the list of
  channels in the cluster;
- ``P:control`` is the pub/sub channel of the server API's commands to every node
  (`channels.control`), JSON;
- ``P:bans`` is a hash of the bans in force, user to its `Disconnect` command's JSON,
  and ``P:bans:v`` a token changed at each ban, which tells a node to read them again.
"""

from __future__ import annotations

import secrets

__all__ = ("Keys",)


class Keys:
    """The Redis keys of one broker, built in one place."""

    __slots__ = (
        "_pubsub_start",
        "bans",
        "bans_version",
        "control",
        "node",
        "node_counts",
        "node_counts_prefix",
        "node_id",
        "nodes",
        "prefix",
    )

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.node_id = secrets.token_hex(8)
        self.node = f"{prefix}:n:{self.node_id}".encode()
        """This node's own pub/sub channel."""
        self.nodes = f"{prefix}:nodes"
        self.node_counts_prefix = f"{prefix}:nc:"
        self.node_counts = self.node_counts_prefix + self.node_id
        """This node's subscriber count per channel."""
        self.control = f"{prefix}:control".encode()
        self.bans = f"{prefix}:bans"
        self.bans_version = f"{prefix}:bans:v"
        self._pubsub_start = len(prefix) + 3  # past "P:p:"

    def stream(self, channel: str) -> list[str]:
        """The stream's meta hash and the stream itself, as the scripts take them."""
        return [self.meta(channel), f"{self.prefix}:s:{channel}"]

    def meta(self, channel: str) -> str:
        return f"{self.prefix}:m:{channel}"

    def pubsub(self, channel: str) -> str:
        return f"{self.prefix}:p:{channel}"

    def channel_of(self, pubsub: bytes) -> str:
        """The channel whose pub/sub channel is *pubsub* (see `pubsub`)."""
        return pubsub[self._pubsub_start :].decode()

    def idempotency(self, channel: str, key: str) -> str:
        # A channel name has no space: the first one ends it, whatever the key holds.
        return f"{self.prefix}:i:{channel} {key}"

    def presence(self, channel: str) -> list[str]:
        """The presence hash, its expiry sorted set, and the users' entry counts (see
        `channels.brokers.redis_scripts`)."""
        prefix = self.prefix
        return [f"{prefix}:pr:{channel}", f"{prefix}:pz:{channel}", f"{prefix}:pu:{channel}"]
