"""Whether a node reaches Redis both ways: the Redis broker's readiness check.

Every ``check_seconds`` the node publishes a ping on its own pub/sub channel
(`channels.brokers.redis_keys.Keys.node`) and waits for it to come back through its
pub/sub connection: a node whose commands work but whose pub/sub is broken would
accept publishes and deliver none, so both directions count.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import anyio
import coredis
import coredis.exceptions

from channels.errors import BrokerUnavailable

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ("HealthCheck", "RETRIED", "UNAVAILABLE", "describe")

logger = logging.getLogger("clarion")

#: What a failing Redis call raises: down, restarting, or too slow.
UNAVAILABLE: Final = (coredis.exceptions.RedisError, OSError, TimeoutError)

#: What background work retries after: the above, and its translation for callers.
RETRIED: Final = (*UNAVAILABLE, BrokerUnavailable)


def describe(exc: BaseException) -> str:
    """What went wrong with Redis, for a log line or a `BrokerUnavailable`."""
    return str(exc) or type(exc).__name__


class HealthCheck:
    """Pings a node's own pub/sub channel; `ready` while the pings come back in time.

    The broker hands it the pings its pub/sub connection receives (`echo`) and tells it
    when that connection (re)subscribed the node's channel (`subscribed`).
    """

    def __init__(
        self,
        client: coredis.Redis[bytes],
        channel: bytes,
        *,
        timeout_seconds: float,
        check_seconds: float,
    ) -> None:
        self._client = client
        self._channel = channel
        self._timeout_seconds = timeout_seconds
        self._check_seconds = check_seconds
        self._pings: dict[bytes, float] = {}
        """The pings not yet back, each with when it was sent."""
        self._ping_count = 0
        self._heard = anyio.Event()
        """Set when a ping came back in time, or pub/sub (re)subscribed the channel."""
        self._echo_seconds: float | None = None
        """The round trip of a ping that came back in time, not yet taken by a check."""
        self._channel_subscribed = False
        self._down_reported = False
        self.ready = False
        """Whether the last check reached Redis both ways within ``timeout_seconds``."""
        self.round_trip_seconds: float | None = None
        """How long the last check took: a publish, back through this node's pub/sub."""

    async def run(
        self,
        pubsub: coredis.patterns.pubsub.PubSub[bytes],
        when_ready: Callable[[], Awaitable[None]],
    ) -> None:
        """Check Redis both ways every ``check_seconds``, then call *when_ready* if it is.

        While ready, a check may take up to ``timeout_seconds``: Redis slower than that
        is unavailable, as it is to a publish. While not ready, a check gives up after
        ``check_seconds`` and the next one starts: a ping sent while pub/sub was still
        reconnecting never comes back, and waiting it out would hold readiness up to
        ``timeout_seconds`` past Redis's recovery. So while Redis is down the node sends
        one ping (a ``PUBLISH`` of a few bytes) per ``check_seconds``, and one more each
        time pub/sub resubscribes: never a tight loop. Runs until cancelled.
        """
        while True:
            started = anyio.current_time()
            if self.ready:
                ready = await self._check(self._timeout_seconds)
            elif await self._subscribe(pubsub):
                started = anyio.current_time()
                ready = await self._check(self._check_seconds)
            else:
                ready = False
            self._set_ready(ready)
            if ready:
                try:
                    await when_ready()
                except RETRIED as exc:
                    logger.warning("Redis catch-up failed: %s", describe(exc))
            await anyio.sleep_until(started + self._check_seconds)

    def echo(self, ping: bytes) -> None:
        """Take note of a ping back through this node's pub/sub."""
        sent = self._pings.pop(ping, None)
        if sent is None:
            return  # from before the last check that succeeded, or not ours
        round_trip = anyio.current_time() - sent
        if round_trip <= self._timeout_seconds:
            self._echo_seconds = round_trip
            self._heard.set()

    def subscribed(self) -> None:
        """Pub/sub (re)subscribed the node's channel: a check waiting pings again."""
        self._heard.set()

    async def _subscribe(self, pubsub: coredis.patterns.pubsub.PubSub[bytes]) -> bool:
        """Subscribe to this node's own channel, once: pub/sub resubscribes it after."""
        if self._channel_subscribed:
            return True
        try:
            with anyio.fail_after(self._timeout_seconds):
                await pubsub.subscribe(self._channel)
        except UNAVAILABLE as exc:
            self._report_unavailable(exc)
            return False
        self._channel_subscribed = True
        return True

    async def _check(self, seconds: float) -> bool:
        """Ping this node's own pub/sub channel; True once a ping comes back in time.

        Any ping sent within ``timeout_seconds`` since the last check that succeeded
        counts, not only this check's: after a stall, the ping sent last before Redis
        resumed is the first to come back. A ping sent before pub/sub (re)subscribed
        never comes back, so the check pings again as soon as pub/sub reports the
        subscription.
        """
        try:
            with anyio.fail_after(seconds):
                await self._ping()
                while self._echo_seconds is None:
                    await self._heard.wait()
                    self._heard = anyio.Event()
                    if self._echo_seconds is None:
                        await self._ping()
        except UNAVAILABLE as exc:
            self._report_unavailable(exc)
            return False
        self.round_trip_seconds, self._echo_seconds = self._echo_seconds, None
        # The next check needs a ping sent after this one succeeded.
        self._pings.clear()
        self._heard = anyio.Event()
        return True

    async def _ping(self) -> None:
        self._ping_count += 1
        ping = b"%d" % self._ping_count
        now = anyio.current_time()
        self._pings = {
            sent_ping: sent
            for sent_ping, sent in self._pings.items()
            if now - sent <= self._timeout_seconds
        }
        self._pings[ping] = now
        await self._client.publish(self._channel, ping)

    def _report_unavailable(self, exc: BaseException) -> None:
        if not self._down_reported:
            logger.warning("Redis is unavailable: %s", describe(exc))
            self._down_reported = True

    def _set_ready(self, ready: bool) -> None:
        if ready and not self.ready:
            logger.info("Redis is available")
            self._down_reported = False
        self.ready = ready
