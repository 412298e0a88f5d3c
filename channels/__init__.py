"""Clarion's pub/sub engine: channel rules, the hub, outboxes and brokers.

It knows nothing of ASGI, HTTP or WebSockets; ``service`` builds on it. A wire protocol
opens a `Connection` per client with `Hub.connect` (the hub from `open_hub`, with the
wire's `Encoding`), decodes the client's requests and calls the connection.
"""

from __future__ import annotations

from channels.brokers import Broker as Broker, open_broker as open_broker
from channels.config import (
    BrokerConfig as BrokerConfig,
    ChannelRule as ChannelRule,
    Config as Config,
    History as History,
    ServerConfig as ServerConfig,
)
from channels.connection import Connection as Connection
from channels.encoding import Encoding as Encoding
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
    TooManySubscriptions as TooManySubscriptions,
)
from channels.hub import Hub as Hub, Subscribed as Subscribed, open_hub as open_hub
from channels.outbox import Delivery as Delivery, Outbox as Outbox
from channels.publication import (
    ClientInfo as ClientInfo,
    HistoryPage as HistoryPage,
    Position as Position,
    Publication as Publication,
    Published as Published,
)
from channels.rules import RuleBook as RuleBook
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
    "TooManySubscriptions",
    "open_broker",
    "open_hub",
)
