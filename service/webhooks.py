"""Webhooks: what happened (`channels.activity`), POSTed to the application, signed.

Each endpoint of ``webhooks:`` gets the events it lists, collected for up to
``batch_seconds`` into one POST of ``{"time_ms": …, "events": [{"name": …}, …]}`` (the
body of Pusher's webhooks), with the headers ``X-Clarion-Signature`` (the lowercase hex
HMAC-SHA256 of the exact body, keyed with the endpoint's ``secret``) and
``X-Clarion-Timestamp`` (Unix seconds, as ``time_ms`` says). A POST that fails (no
connection, a timeout, a status other than 2xx) is tried again ``retries`` times, with
exponential backoff and jitter; then its events are given up and counted. Offering an
event never waits: an endpoint holds at most ``queue_events``, and drops (and counts)
what comes beyond, so a slow or dead endpoint never slows a publish or a subscriber.

Each event is sent once for the cluster, by the node where it happened (see
`channels.activity`). When the node stops, what is queued (its last events: members
leaving, channels vacated) gets ``server.shutdown_grace_seconds`` to be sent. At most a
tenth of an endpoint's queue holds ``connection_refused`` events, so that a flood of
bad handshakes cannot push the others out.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, TypeAlias
from urllib.parse import urlsplit

import anyio
import msgspec

from channels.activity import Activity  # noqa: TC001 - msgspec reads Struct annotations at runtime
from service.client.errors import ConnectionFailed
from service.client.http import post

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import AsyncIterator, Callable, Sequence

    from channels.activity import ActivityName
    from service.settings import WebhookDelivery, WebhookSettings

__all__ = (
    "Endpoint",
    "Render",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Webhooks",
    "clarion_endpoint",
    "open_webhooks",
    "sign",
)

Render: TypeAlias = "Callable[[list[Activity], float], tuple[bytes, list[tuple[str, str]]]]"
"""Turns a batch of events into a POST's body and headers, at a Unix time."""

SIGNATURE_HEADER: Final = "X-Clarion-Signature"
TIMESTAMP_HEADER: Final = "X-Clarion-Timestamp"
#: The longest pause between two attempts of one POST.
MAX_RETRY_DELAY_SECONDS: Final = 30.0

logger = logging.getLogger("clarion")


class _Body(msgspec.Struct, frozen=True):
    time_ms: int
    events: list[Activity]


_encoder = msgspec.json.Encoder()


def sign(secret: str, body: bytes) -> str:
    """The signature of *body*: the lowercase hex HMAC-SHA256 keyed with *secret*."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def clarion_endpoint(settings: WebhookSettings, outcomes: Counter[str]) -> Endpoint:
    """An endpoint of ``webhooks:``: Clarion's events, signed with its own secret."""

    def render(batch: list[Activity], now: float) -> tuple[bytes, list[tuple[str, str]]]:
        body = _encoder.encode(_Body(int(now * 1000), batch))
        headers = [
            (SIGNATURE_HEADER, sign(settings.secret, body)),
            (TIMESTAMP_HEADER, str(int(now))),
        ]
        return body, headers

    return Endpoint(settings, frozenset(settings.events), render, outcomes)


class Endpoint:
    """One endpoint's queue and the task that POSTs it.

    Args:
        settings: where and how to POST.
        wanted: the events it gets.
        render: what a batch of them is POSTed as.
        outcomes: where each event's outcome is counted.
        keep: which of the wanted events it gets (all by default).
    """

    def __init__(
        self,
        settings: WebhookDelivery,
        wanted: frozenset[ActivityName],
        render: Render,
        outcomes: Counter[str],
        keep: Callable[[Activity], bool] | None = None,
    ) -> None:
        self.settings = settings
        self._render = render
        self._keep = keep
        self._events = wanted
        self._queue: deque[Activity] = deque()
        self._busy = False
        self._refused = 0
        """``connection_refused`` events queued: at most a tenth of the queue, so that a
        flood of bad handshakes cannot push the other events out."""
        self._refused_limit = max(1, settings.queue_events // 10)
        self._bytes = 0
        """The published data queued, in bytes (at most ``queue_bytes``)."""
        self._waiting = anyio.Event()
        self._outcomes = outcomes
        self._netloc = urlsplit(settings.url).netloc.rpartition("@")[2]

    def offer(self, activity: Activity) -> None:
        if activity.name not in self._events or (self._keep and not self._keep(activity)):
            return
        refused = activity.name == "connection_refused"
        size = 0 if activity.data is None else len(activity.data)
        if (
            len(self._queue) >= self.settings.queue_events
            or self._bytes + size > self.settings.queue_bytes
            or (refused and self._refused >= self._refused_limit)
        ):
            self._outcomes["dropped"] += 1
            return
        self._refused += refused
        self._bytes += size
        self._queue.append(activity)
        self._waiting.set()

    async def run(self) -> None:
        settings = self.settings
        while True:
            await self._waiting.wait()
            await anyio.sleep(settings.batch_seconds)
            while self._queue:
                count = min(len(self._queue), settings.batch_max_events)
                batch = [self._queue.popleft() for _ in range(count)]
                self._refused -= sum(event.name == "connection_refused" for event in batch)
                self._bytes -= sum(len(event.data) for event in batch if event.data is not None)
                self._busy = True
                try:
                    await self._deliver(batch)
                except Exception:  # a bug here must cost events, never the node
                    logger.exception("webhook to %s: events given up", self._netloc)
                    self._outcomes["failed"] += len(batch)
                finally:
                    self._busy = False
            self._waiting = anyio.Event()

    async def flushed(self) -> None:
        """Wait until nothing is queued or being sent."""
        while self._queue or self._busy:  # noqa: ASYNC110 - only at shutdown, briefly
            await anyio.sleep(0.02)

    async def _deliver(self, batch: list[Activity]) -> None:
        body, headers = self._render(batch, time.time())
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                status, _ = await post(
                    self.settings.url,
                    body,
                    headers=headers,
                    time_limit=self.settings.timeout_seconds,
                )
            except ConnectionFailed as exc:
                problem = exc.message
            else:
                if 200 <= status < 300:
                    self._outcomes["sent"] += len(batch)
                    return
                problem = f"HTTP {status}"
            if attempt + 1 < attempts:
                delay = min(MAX_RETRY_DELAY_SECONDS, 0.5 * 2 ** min(attempt, 10))
                logger.info(
                    "webhook to %s failed (%s); retrying in %.1fs",
                    self._netloc,
                    problem,
                    delay,
                )
                await anyio.sleep(random.uniform(delay / 2, delay))
        logger.warning(
            "webhook to %s failed %d times (%s): %d events given up",
            self._netloc,
            attempts,
            problem,
            len(batch),
        )
        self._outcomes["failed"] += len(batch)


class Webhooks:
    """Endpoints that hear of one hub's events; `observe` hands each the events it wants."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = endpoints

    def observe(self, activity: Activity) -> None:
        """Queue *activity* for the endpoints that want it. Never waits."""
        for endpoint in self._endpoints:
            endpoint.offer(activity)


@asynccontextmanager
async def open_webhooks(
    endpoints: Sequence[Endpoint], *, grace_seconds: float
) -> AsyncIterator[None]:
    """Run *endpoints* for the block (each counts its events' outcomes: ``sent``,
    ``failed``, ``dropped``). Leaving the block, they get up to *grace_seconds* to send
    what is queued (the events of the node's shutdown)."""
    async with anyio.create_task_group() as tg:
        for endpoint in endpoints:
            tg.start_soon(endpoint.run)
        try:
            yield
        finally:
            with anyio.move_on_after(grace_seconds, shield=True):
                for endpoint in endpoints:
                    await endpoint.flushed()
            tg.cancel_scope.cancel()
