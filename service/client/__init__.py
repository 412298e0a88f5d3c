"""A Python client for Clarion, on anyio: it runs on asyncio and on trio alike.

::

    async with open_client("ws://127.0.0.1:8000/ws") as client:
        async with client.subscribe("news") as news:
            await client.publish("news", {"text": "hi"})
            async for event in news:
                print(event)

The modules: `service.client.connection` (`open_client`, `Client`: requests,
reconnecting, recovery), `service.client.subscription` (a subscription's bounded
stream), `service.client.events` (what a subscriber receives, and frame decoding),
`service.client.errors`, `service.client.connector` (tokens, backoff, which refusals
are retried), `service.client.websocket` (wsproto over an anyio stream),
`service.client.http` (`ServerAPIClient`: the server API over HTTP, for a backend) and
`service.client.commands` (the ``clarion`` commands that are clients).
"""

from __future__ import annotations

from channels.publication import ClientInfo as ClientInfo, Position as Position
from service.client.connection import (
    DEFAULT_BUFFER_EVENTS as DEFAULT_BUFFER_EVENTS,
    RECONNECT_CLOSE_CODES as RECONNECT_CLOSE_CODES,
    Client as Client,
    open_client as open_client,
)
from service.client.errors import (
    ClarionError as ClarionError,
    ConnectionClosed as ConnectionClosed,
    ConnectionFailed as ConnectionFailed,
    HandshakeRefused as HandshakeRefused,
    SlowSubscriber as SlowSubscriber,
    SubscriptionEnded as SubscriptionEnded,
)
from service.client.events import (
    ClientStatistics as ClientStatistics,
    Gap as Gap,
    HistoryPage as HistoryPage,
    Join as Join,
    Leave as Leave,
    Message as Message,
    NotRecovered as NotRecovered,
    Restart as Restart,
    SubscriptionEvent as SubscriptionEvent,
)
from service.client.http import ServerAPIClient as ServerAPIClient
from service.client.subscription import Subscription as Subscription

__all__ = (
    "ClarionError",
    "Client",
    "ClientInfo",
    "ClientStatistics",
    "ConnectionClosed",
    "ConnectionFailed",
    "DEFAULT_BUFFER_EVENTS",
    "Gap",
    "HandshakeRefused",
    "HistoryPage",
    "Join",
    "Leave",
    "Message",
    "NotRecovered",
    "Position",
    "RECONNECT_CLOSE_CODES",
    "Restart",
    "ServerAPIClient",
    "SlowSubscriber",
    "Subscription",
    "SubscriptionEnded",
    "SubscriptionEvent",
    "open_client",
)
