"""A minimal ASGI response: a status, a body and headers, sent whole.

It answers an HTTP request, or refuses a WebSocket handshake through
`WebSocket.send_denial_response` (the ``websocket.http.response`` extension), as a
Starlette ``Response`` does, without depending on Starlette.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from service.types import Receive, Scope, Send

__all__ = ("Response",)


class Response:
    """An HTTP response with a ``content-length``; call it as an ASGI app to send it."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, body: bytes = b"", headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        self.status = status
        self.body = body
        self.headers = [(b"content-length", str(len(body)).encode()), *headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the response; on a WebSocket scope, as the handshake's denial."""
        prefix = "websocket." if scope["type"] == "websocket" else ""
        start = {"type": f"{prefix}http.response.start", "status": self.status}
        await send({**start, "headers": self.headers})
        await send({"type": f"{prefix}http.response.body", "body": self.body})
