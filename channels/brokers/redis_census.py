"""Which channels have subscribers in the cluster, and how many: each node's counts in
Redis, summed when asked.

Each node keeps its own subscriber count per channel in a hash of its own (``P:nc:NODE``)
and lists itself in ``P:nodes`` with when it expires; both expire unless the node keeps
refreshing them, so the channels of a node that died leave the list after
``presence_ttl_seconds``. The script that writes a node's counts also tells whether the
change occupied or vacated a channel in the whole cluster (no other live node has it),
and a sweep of the nodes that died tells which channels only they had: each such event
is found by exactly one node. A change of a count costs nothing at once: the counts that
changed are written together by the broker's upkeep. Listing reads every live node's
hash in one script (no ``KEYS``, no scan of the keyspace): its cost grows with the
number of channels with subscribers, not with the number of keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from channels.brokers import redis_scripts

if TYPE_CHECKING:
    import coredis

    from channels.brokers.redis_keys import Keys

__all__ = ("Census",)


class Census:
    """This node's subscriber counts, written to Redis; the cluster's, read from it."""

    def __init__(
        self, client: coredis.Redis[bytes], keys: Keys, *, ttl_seconds: float, timeout: float
    ) -> None:
        self._keys = keys
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._timeout = timeout
        self._counts: dict[str, int] = {}
        self._changed: dict[str, int] = {}
        self._write = client.register_script(redis_scripts.NODE_COUNTS)
        self._sweep = client.register_script(redis_scripts.SWEEP_NODES)
        self._list = client.register_script(redis_scripts.CHANNELS)

    @property
    def pending(self) -> bool:
        """Whether some counts changed since they were last written."""
        return bool(self._changed)

    def count(self, channel: str, subscribers: int) -> None:
        """Note that this node has *subscribers* on *channel* now. Never blocks."""
        if subscribers:
            self._counts[channel] = subscribers
        else:
            self._counts.pop(channel, None)
        self._changed[channel] = subscribers

    async def write(self) -> list[tuple[str, bool]]:
        """Write the counts that changed, and keep this node listed; return the channels
        this occupied (True) or vacated (False) in the whole cluster.

        Raises:
            As a Redis call, or TimeoutError; the counts are written at the next call.
        """
        changed, self._changed = self._changed, {}
        pairs = [str(item) for pair in changed.items() for item in pair]
        keys = self._keys
        try:
            with anyio.fail_after(self._timeout):
                reply: Any = await self._write(
                    keys=[keys.nodes, keys.node_counts],
                    args=[keys.node_id, self._ttl_ms, keys.node_counts_prefix, *pairs],
                )
        except BaseException:
            self._changed = {**changed, **self._changed}
            raise
        exists, changes = reply
        if not exists and self._counts:
            # The hash expired while Redis was out of reach: every count again.
            self._changed = {**self._counts, **self._changed}
        return [
            (changes[index].decode(), changes[index + 1] == b"o")
            for index in range(0, len(changes), 2)
        ]

    async def sweep(self) -> list[str]:
        """Forget the nodes that stopped refreshing their counts; return the channels
        that only they had.

        Raises:
            As a Redis call, or TimeoutError.
        """
        with anyio.fail_after(self._timeout):
            vacated: Any = await self._sweep(
                keys=[self._keys.nodes], args=[self._keys.node_counts_prefix]
            )
        return [channel.decode() for channel in vacated]

    async def channels(self, prefix: str, after: str, limit: int) -> list[tuple[str, int]]:
        """The channels with subscribers on any node, in name order: those that start
        with *prefix* and come after *after*, at most *limit* + 1 (the last one says
        there are more), each with its subscribers on every node.

        Raises:
            As a Redis call, or TimeoutError.
        """
        with anyio.fail_after(self._timeout):
            found: Any = await self._list(
                keys=[self._keys.nodes],
                args=[
                    self._keys.node_counts.removesuffix(self._keys.node_id),
                    prefix,
                    after,
                    limit,
                ],
            )
        return [(found[index].decode(), int(found[index + 1])) for index in range(0, len(found), 2)]
