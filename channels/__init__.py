"""Clarion's pub/sub engine: channel rules, the hub, outboxes and brokers.

It knows nothing of ASGI, HTTP or WebSockets; ``service`` builds on it. A wire protocol
opens a `Connection` per client with `Hub.connect` (the hub from `open_hub`, with the
wire's `Encoding`), decodes the client's requests and calls the connection.

Each name is imported from its module when first asked for (PEP 562), so that a program
that needs only the wire's types (the Python client: `channels.errors`,
`channels.publication`) does not load the hub, the brokers and the rules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from channels.brokers import (
        Broker as Broker,
        open_broker as open_broker,
    )
    from channels.config import (
        BrokerConfig as BrokerConfig,
        ChannelRule as ChannelRule,
        Config as Config,
        History as History,
        ServerConfig as ServerConfig,
    )
    from channels.connection import (
        Connection as Connection,
    )
    from channels.encoding import (
        Encoding as Encoding,
    )
    from channels.errors import (
        AlreadySubscribed as AlreadySubscribed,
        BrokerUnavailable as BrokerUnavailable,
        ChannelNotFound as ChannelNotFound,
        ChannelsError as ChannelsError,
        ConfigError as ConfigError,
        InvalidChannelName as InvalidChannelName,
        InvalidData as InvalidData,
        MessageTooLarge as MessageTooLarge,
        NotSubscribed as NotSubscribed,
        PermissionDenied as PermissionDenied,
        PresenceDisabled as PresenceDisabled,
        ServerClosing as ServerClosing,
        TooManyChannels as TooManyChannels,
        TooManySubscriptions as TooManySubscriptions,
        UnsubscribedByServer as UnsubscribedByServer,
    )
    from channels.hub import (
        Hub as Hub,
        Subscribed as Subscribed,
        open_hub as open_hub,
    )
    from channels.outbox import (
        Delivery as Delivery,
        Outbox as Outbox,
    )
    from channels.publication import (
        ClientInfo as ClientInfo,
        HistoryPage as HistoryPage,
        Position as Position,
        Publication as Publication,
        Published as Published,
    )
    from channels.rules import (
        RuleBook as RuleBook,
    )
    from channels.statistics import (
        ChannelStatistics as ChannelStatistics,
        HubStatistics as HubStatistics,
    )

__all__ = (
    "AlreadySubscribed",
    "Broker",
    "BrokerConfig",
    "BrokerUnavailable",
    "ChannelNotFound",
    "ChannelRule",
    "ChannelStatistics",
    "ChannelsError",
    "ClientInfo",
    "Config",
    "ConfigError",
    "Connection",
    "Delivery",
    "Encoding",
    "History",
    "HistoryPage",
    "Hub",
    "HubStatistics",
    "InvalidChannelName",
    "InvalidData",
    "MessageTooLarge",
    "NotSubscribed",
    "Outbox",
    "PermissionDenied",
    "Position",
    "PresenceDisabled",
    "Publication",
    "Published",
    "RuleBook",
    "ServerClosing",
    "ServerConfig",
    "Subscribed",
    "TooManyChannels",
    "TooManySubscriptions",
    "UnsubscribedByServer",
    "open_broker",
    "open_hub",
)

_LAZY = {
    "AlreadySubscribed": "channels.errors",
    "Broker": "channels.brokers",
    "BrokerConfig": "channels.config",
    "BrokerUnavailable": "channels.errors",
    "ChannelNotFound": "channels.errors",
    "ChannelRule": "channels.config",
    "ChannelStatistics": "channels.statistics",
    "ChannelsError": "channels.errors",
    "ClientInfo": "channels.publication",
    "Config": "channels.config",
    "ConfigError": "channels.errors",
    "Connection": "channels.connection",
    "Delivery": "channels.outbox",
    "Encoding": "channels.encoding",
    "History": "channels.config",
    "HistoryPage": "channels.publication",
    "Hub": "channels.hub",
    "HubStatistics": "channels.statistics",
    "InvalidChannelName": "channels.errors",
    "InvalidData": "channels.errors",
    "MessageTooLarge": "channels.errors",
    "NotSubscribed": "channels.errors",
    "Outbox": "channels.outbox",
    "PermissionDenied": "channels.errors",
    "Position": "channels.publication",
    "PresenceDisabled": "channels.errors",
    "Publication": "channels.publication",
    "Published": "channels.publication",
    "RuleBook": "channels.rules",
    "ServerClosing": "channels.errors",
    "ServerConfig": "channels.config",
    "Subscribed": "channels.hub",
    "TooManyChannels": "channels.errors",
    "TooManySubscriptions": "channels.errors",
    "UnsubscribedByServer": "channels.errors",
    "open_broker": "channels.brokers",
    "open_hub": "channels.hub",
}


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> object:
    """Import *name* from its module on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'channels' has no attribute {name!r}")
