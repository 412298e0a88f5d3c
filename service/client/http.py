"""The server API over HTTP, for a backend written in Python: publish, broadcast, read
history and presence, list channels, disconnect and unsubscribe users.

::

    api = ServerAPIClient("http://127.0.0.1:8000", api_key=os.environ["CLARION_API_KEY"])
    await api.broadcast(["news", "sports"], {"text": "hi"})
    await api.disconnect("mallory", until=time.time() + 3600)

Each call is one HTTP/1.1 request (h11 over an anyio stream, TLS for ``https://``) to
the ``/api/`` route of the same name, and returns the reply's JSON as documented in
docs/http-api.md; an error reply raises `ClarionError` with its code and message, a
connection that fails `ConnectionFailed`. The WebSocket client (`open_client`) is for
clients; this is for the application that drives them.
"""

from __future__ import annotations

import math
import ssl
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlencode, urlsplit

import anyio
import h11
import msgspec

from service.client.errors import ClarionError, ConnectionFailed

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ("DEFAULT_API_URL", "ServerAPIClient", "as_raw", "post")

DEFAULT_API_URL: Final = "http://127.0.0.1:8000"
_encoder = msgspec.json.Encoder()
#: The largest answer read (a page of channels or history is far smaller).
_MAX_ANSWER_BYTES: Final = 64 * 1024 * 1024


class ServerAPIClient:
    """The server API of the Clarion node at *url* (``http://HOST:PORT``, plus the mount
    path when Clarion is mounted in another app), with *api_key* when the node has keys."""

    def __init__(
        self, url: str = DEFAULT_API_URL, *, api_key: str | None = None, timeout: float = 30.0
    ) -> None:
        self.url = url.rstrip("/")
        self._headers = [("authorization", f"Bearer {api_key}")] if api_key else []
        self._timeout = timeout

    async def publish(
        self, channel: str, data: object, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``POST /api/publish``: ``{"channel", "offset", "epoch", "duplicate"?}``."""
        body = {"channel": channel, "data": as_raw(data), "idempotency_key": idempotency_key}
        return await self._call("POST", "publish", body)

    async def broadcast(
        self, channels: Sequence[str], data: object, *, idempotency_key: str | None = None
    ) -> list[dict[str, Any]]:
        """``POST /api/broadcast``: each channel's result, ``offset`` or ``error``."""
        body = {
            "channels": list(channels),
            "data": as_raw(data),
            "idempotency_key": idempotency_key,
        }
        results: list[dict[str, Any]] = (await self._call("POST", "broadcast", body))["results"]
        return results

    async def history(
        self, channel: str, *, since: int | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """``GET /api/history``: ``{"channel", "offset", "epoch", "messages"}``."""
        query = {"channel": channel, "since": since, "limit": limit}
        return await self._call("GET", "history", query=query)

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        """``GET /api/presence``: the clients, ``{"client", "user"}`` each."""
        clients: list[dict[str, Any]] = (
            await self._call("GET", "presence", query={"channel": channel})
        )["clients"]
        return clients

    async def presence_stats(self, channel: str) -> dict[str, Any]:
        """``GET /api/presence?count_only=1``: ``{"client_count", "user_count"}``."""
        return await self._call("GET", "presence", query={"channel": channel, "count_only": 1})

    async def channels(
        self, *, prefix: str = "", cursor: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """``GET /api/channels``: ``{"channels": [{"channel", "subscribers"}], "cursor"}``."""
        query = {"prefix": prefix or None, "cursor": cursor, "limit": limit}
        return await self._call("GET", "channels", query=query)

    async def disconnect(
        self,
        user: str,
        *,
        code: int | None = None,
        reason: str | None = None,
        until: float | None = None,
    ) -> None:
        """``POST /api/disconnect``: close every connection of *user*, and with *until*
        (a Unix time) keep the user out until then.

        Raises:
            ValueError: for an *until* that is not a finite number (JSON has none).
        """
        if until is not None and not math.isfinite(until):
            raise ValueError(f"until must be a finite Unix time, not {until}")
        body = {"user": user, "code": code, "reason": reason, "until": until}
        await self._call("POST", "disconnect", body)

    async def unsubscribe(self, user: str, channel: str) -> None:
        """``POST /api/unsubscribe``: end *user*'s subscriptions to *channel*."""
        await self._call("POST", "unsubscribe", {"user": user, "channel": channel})

    async def batch(self, requests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``POST /api/batch``: each request (with its ``method``) answered in order, a
        reply or an error body each (not raised)."""
        replies: list[dict[str, Any]] = (
            await self._call("POST", "batch", {"requests": list(requests)})
        )["replies"]
        return replies

    async def _call(
        self,
        method: str,
        name: str,
        body: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        path = f"{self.url}/api/{name}"
        if query:
            path += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        payload = b"" if body is None else _encoder.encode(_without_nones(body))
        status, answer = await post(
            path, payload, method=method, headers=self._headers, time_limit=self._timeout
        )
        try:
            decoded: dict[str, Any] = msgspec.json.decode(answer)
        except msgspec.DecodeError:
            raise ClarionError(0, f"HTTP {status}: not a Clarion answer") from None
        if decoded.get("type") == "error":
            raise ClarionError(int(decoded["code"]), str(decoded["message"]))
        return decoded


async def post(
    url: str,
    body: bytes,
    *,
    method: str = "POST",
    headers: Sequence[tuple[str, str]] = (),
    time_limit: float,
) -> tuple[int, bytes]:
    """Make one HTTP/1.1 request to *url* (``http://`` or ``https://``, verified against
    the system's certificates); return the answer's status and body.

    Raises:
        ConnectionFailed: no connection, TLS failed, *time_limit* (seconds) passed, or the peer's
            answer is not HTTP/1.1.
    """
    try:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_ANSWER_BYTES)
        request = h11.Request(
            method=method,
            target=target,
            headers=[
                ("host", parts.netloc.rpartition("@")[2]),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("connection", "close"),
                *headers,
            ],
        )
        with anyio.fail_after(time_limit):
            port = parts.port or (443 if secure else 80)
            if secure:
                stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                    host,
                    port,
                    ssl_context=ssl.create_default_context(),
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(host, port)
            async with stream:
                await stream.send(
                    connection.send(request)
                    + connection.send(h11.Data(data=body))
                    + connection.send(h11.EndOfMessage())
                )
                return await _answer(connection, stream)
    except (
        OSError,  # refused, reset, TLS (ssl.SSLError), no such host
        TimeoutError,
        anyio.EndOfStream,
        anyio.BrokenResourceError,  # reset while sending or reading
        h11.ProtocolError,
        ValueError,  # a URL whose port is not a number, or out of range
    ) as exc:
        raise ConnectionFailed(f"{url}: {type(exc).__name__}: {exc}") from exc


async def _answer(connection: h11.Connection, stream: anyio.abc.ByteStream) -> tuple[int, bytes]:
    status = 0
    chunks: list[bytes] = []
    size = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            try:
                connection.receive_data(await stream.receive())
            except anyio.EndOfStream:
                connection.receive_data(b"")
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > _MAX_ANSWER_BYTES:
                raise h11.RemoteProtocolError("the answer is too large")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, b"".join(chunks)


def as_raw(data: object) -> msgspec.Raw:
    """*data* as JSON: a `msgspec.Raw` as it is, any other value encoded with msgspec."""
    return data if isinstance(data, msgspec.Raw) else msgspec.Raw(_encoder.encode(data))


def _without_nones(body: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if value is not None}
