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
`channels.activity`). Events still queued when the node stops are given up.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import anyio
import msgspec

from channels.activity import Activity  # noqa: TC001 - msgspec reads Struct annotations at runtime
from service.client.errors import ConnectionFailed
from service.client.http import post

if TYPE_CHECKING:
    from collections import Counter
    from collections.abc import AsyncIterator

    from service.settings import WebhookSettings

__all__ = ("SIGNATURE_HEADER", "TIMESTAMP_HEADER", "Webhooks", "open_webhooks", "sign")

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


class _Endpoint:
    """One endpoint's queue and the task that POSTs it."""

    def __init__(self, settings: WebhookSettings, outcomes: Counter[str]) -> None:
        self.settings = settings
        self._events = frozenset(settings.events)
        self._queue: deque[Activity] = deque()
        self._waiting = anyio.Event()
        self._outcomes = outcomes
        self._netloc = urlsplit(settings.url).netloc.rpartition("@")[2]

    def offer(self, activity: Activity) -> None:
        if activity.name not in self._events:
            return
        if len(self._queue) >= self.settings.queue_events:
            self._outcomes["dropped"] += 1
            return
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
                await self._deliver(batch)
            self._waiting = anyio.Event()

    async def _deliver(self, batch: list[Activity]) -> None:
        now = time.time()
        body = _encoder.encode(_Body(int(now * 1000), batch))
        headers = [
            (SIGNATURE_HEADER, sign(self.settings.secret, body)),
            (TIMESTAMP_HEADER, str(int(now))),
        ]
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
    """Every endpoint of ``webhooks:``; `observe` hands each the events it wants."""

    def __init__(self, endpoints: list[_Endpoint]) -> None:
        self._endpoints = endpoints

    def observe(self, activity: Activity) -> None:
        """Queue *activity* for the endpoints that want it. Never waits."""
        for endpoint in self._endpoints:
            endpoint.offer(activity)


@asynccontextmanager
async def open_webhooks(
    settings: list[WebhookSettings], outcomes: Counter[str]
) -> AsyncIterator[Webhooks]:
    """Run the webhooks of *settings* for the block, counting each event's outcome
    (``sent``, ``failed``, ``dropped``) in *outcomes*."""
    endpoints = [_Endpoint(endpoint, outcomes) for endpoint in settings]
    async with anyio.create_task_group() as tg:
        for endpoint in endpoints:
            tg.start_soon(endpoint.run)
        try:
            yield Webhooks(endpoints)
        finally:
            tg.cancel_scope.cancel()
