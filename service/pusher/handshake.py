"""A WebSocket handshake at ``/app/{key}``: which app, which protocol version, room for
one more connection; then the connection is served by `service.session.run_session`
with the app's `service.pusher.session.PusherDoor`.

Pusher refuses a connection after accepting it: a ``pusher:error`` with the code, then
a close with the same code, from which the client library knows whether to try again.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import TYPE_CHECKING, Final

from channels.errors import ServerClosing
from service.admission import address
from service.datastructures import QueryParams
from service.errors import AddressFull, NodeFull
from service.framewriter import open_frame_writer
from service.logs import fields, peer
from service.pusher.codes import PusherCode
from service.pusher.protocol import encode_error
from service.pusher.session import PusherDoor
from service.session import run_session
from service.websocket import WebSocketDisconnect

if TYPE_CHECKING:
    from service.apps import App, Apps
    from service.framewriter import SocketFrameWriter, TransportFrameWriter
    from service.keepalive import KeepAlive
    from service.metrics import NodeCounters
    from service.settings import ServerSettings
    from service.slots import Slots
    from service.types import Send
    from service.websocket import WebSocket

__all__ = (
    "PATH_PREFIX",
    "Refused",
    "SUPPORTED_PROTOCOLS",
    "serve_pusher",
)

logger = logging.getLogger("clarion")

#: Where Pusher clients connect: ``/app/{key}``.
PATH_PREFIX: Final = "/app/"
#: The protocol versions served (the query's ``protocol``); 7 is pusher-js's.
SUPPORTED_PROTOCOLS: Final = frozenset({"5", "6", "7"})


class Refused(Exception):
    """A handshake refused with a Pusher code."""

    def __init__(self, code: PusherCode, message: str) -> None:
        super().__init__(message)
        self.code = code


async def serve_pusher(
    ws: WebSocket,
    send: Send,
    *,
    key: str,
    apps: Apps | None,
    server: ServerSettings,
    slots: Slots,
    counters: NodeCounters,
    writers: set[TransportFrameWriter | SocketFrameWriter],
    keepalive: KeepAlive | None = None,
    auth_required: bool = False,
) -> None:
    """Serve a Pusher client that connected to ``/app/{key}`` until it leaves.

    *keepalive* pings it after the app's activity timeout (see `service.keepalive`).

    With *auth_required* (``auth.required``), a client of the default app must sign in
    before it subscribes to a channel that needs no authorization of its own: the
    server's channels have no anonymous way in.
    """
    try:
        app = _admit(ws, key, apps)
        if app.hub.closing:
            raise Refused(PusherCode.RECONNECT, "server shutting down: reconnect")
        limit = app.settings.max_connections
        if limit is not None and app.connections >= limit:
            raise Refused(PusherCode.OVER_QUOTA, f"the app has {limit} connections already")
        try:
            with slots.hold(address(ws.scope), server):
                app.connections += 1
                frames = open_frame_writer(send)
                if frames is not None:
                    writers.add(frames)
                    app.writers.add(frames)
                try:
                    door = PusherDoor(
                        app,
                        server,
                        errors=counters.errors,
                        sign_in_first=auth_required and app.settings.default,
                    )
                    await run_session(
                        ws,
                        app.hub,
                        server,
                        door=door,
                        frames=frames,
                        counters=counters,
                        writers=writers,
                        keepalive=keepalive,
                    )
                finally:
                    app.connections -= 1
                    if frames is not None:
                        writers.discard(frames)
                        app.writers.discard(frames)
        except (NodeFull, AddressFull) as exc:
            raise Refused(PusherCode.OVER_CAPACITY, str(exc)) from None
        except ServerClosing:
            raise Refused(PusherCode.RECONNECT, "server shutting down: reconnect") from None
    except Refused as refused:
        counters.refused[refused.code] += 1
        extra = fields(client=peer(ws.client), code=refused.code, reason=str(refused))
        logger.info("handshake refused", extra=extra)
        with suppress(WebSocketDisconnect):
            await ws.accept()
            await ws.send_text(encode_error(refused.code, str(refused)).decode())
            await ws.close(refused.code, str(refused))


def _admit(ws: WebSocket, key: str, apps: Apps | None) -> App:
    """The app of *key*, once the handshake asks for a protocol version served.

    Raises:
        Refused: with 4008, 4006 or 4007 for the version, 4100 before the server
            started, 4001 for the key.
    """
    version = QueryParams(ws.scope.get("query_string", b"")).get("protocol")
    if version is None:
        raise Refused(PusherCode.NO_PROTOCOL, "no protocol version supplied")
    if not version.isdigit():
        raise Refused(PusherCode.INVALID_VERSION, f"invalid version string {version[:20]!r}")
    if version not in SUPPORTED_PROTOCOLS:
        raise Refused(PusherCode.UNSUPPORTED_PROTOCOL, f"unsupported protocol version {version}")
    if apps is None:  # before the lifespan started it, or after it stopped
        raise Refused(PusherCode.OVER_CAPACITY, "the server is not started: try again")
    app = apps.by_key(key)
    if app is None:
        raise Refused(PusherCode.APP_NOT_FOUND, f"no app has the key {key[:64]!r}")
    return app
