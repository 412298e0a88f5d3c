"""Clarion's ASGI side: the WebSocket API, the wire protocol, sessions and the app.

Every name here is imported when first asked for (``from service import create_app,
Settings, WebSocket``), so that ``import service.client`` loads the client and the wire
definitions only, not the server (hypercorn, prometheus-client, PyJWT, h11).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.app import Clarion as Clarion, create_app as create_app
    from service.settings import Settings as Settings
    from service.websocket import (
        HTTPConnection as HTTPConnection,
        WebSocket as WebSocket,
        WebSocketDisconnect as WebSocketDisconnect,
        WebSocketState as WebSocketState,
    )

__all__ = (
    "Clarion",
    "HTTPConnection",
    "Settings",
    "WebSocket",
    "WebSocketDisconnect",
    "WebSocketState",
    "create_app",
)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


_LAZY = {
    "Clarion": "service.app",
    "create_app": "service.app",
    "Settings": "service.settings",
    "HTTPConnection": "service.websocket",
    "WebSocket": "service.websocket",
    "WebSocketDisconnect": "service.websocket",
    "WebSocketState": "service.websocket",
}


def __getattr__(name: str) -> object:
    """Import *name* from its module on first use (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'service' has no attribute {name!r}")
