"""Clarion's ASGI side: the WebSocket API, the wire protocol, sessions and the app."""

from __future__ import annotations

from service.app import Clarion as Clarion, create_app as create_app
from service.websocket import (
    HTTPConnection as HTTPConnection,
    WebSocket as WebSocket,
    WebSocketDisconnect as WebSocketDisconnect,
    WebSocketState as WebSocketState,
)

__all__ = (
    "Clarion",
    "HTTPConnection",
    "WebSocket",
    "WebSocketDisconnect",
    "WebSocketState",
    "create_app",
)
