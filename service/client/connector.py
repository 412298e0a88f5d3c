"""How the Python client gets a WebSocket: the token it offers, which refusals it
retries, and how long it waits between attempts.

The first connection is opened at once and its failure raised (`Connector.open`);
later ones (`Connector.reconnect`) are retried with capped exponential backoff and full
jitter: before attempt *n* the wait is random between 0 and
``min(backoff_max_seconds, backoff_initial_seconds * 2**n)``, which spreads the clients
of a node that went away instead of bringing them all back at the same moment.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Final

import anyio

from channels.errors import BrokerUnavailable, ServerClosing
from service.client.errors import ConnectionFailed, HandshakeRefused
from service.client.websocket import connect_websocket, parse_url
from service.errors import AddressFull, InvalidToken, NodeFull, TokenExpired, Unauthenticated

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable

    from service.client.websocket import ClientWebSocket

__all__ = (
    "BUSY_CODES",
    "Connector",
    "DEFAULT_BACKOFF_INITIAL_SECONDS",
    "DEFAULT_BACKOFF_MAX_SECONDS",
    "DEFAULT_CONNECT_TIMEOUT_SECONDS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_WRITE_BUFFER_BYTES",
    "TOKEN_CODES",
)

DEFAULT_BACKOFF_INITIAL_SECONDS: Final = 0.5
DEFAULT_BACKOFF_MAX_SECONDS: Final = 30.0
#: TCP, TLS and the upgrade, per attempt.
DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 10.0
#: Larger incoming messages close the connection (1009); a history reply can be large.
DEFAULT_MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
#: Outgoing bytes queued before a request waits for the socket.
DEFAULT_WRITE_BUFFER_BYTES: Final = 64 * 1024

#: Handshake refusals that a new token may fix: 108, 109, 110.
TOKEN_CODES: Final = frozenset((Unauthenticated.code, InvalidToken.code, TokenExpired.code))
#: Handshake refusals that waiting may fix: 112, 113, 300, 301.
BUSY_CODES: Final = frozenset(
    (NodeFull.code, AddressFull.code, ServerClosing.code, BrokerUnavailable.code)
)
#: Statuses of a refusal that is not Clarion's (a proxy's) that waiting may fix.
_BUSY_HTTP_STATUSES: Final = frozenset((429, 502, 503, 504))

logger = logging.getLogger(__name__)


class Connector:
    """Opens WebSockets to one URL for one client.

    Args:
        url: ``ws://`` or ``wss://``.
        token: offered as the ``bearer.<token>`` subprotocol; ``Client.refresh``
            replaces it.
        get_token: returns a new token: called when there is none, and when the
            server says the one offered is missing, invalid or expired.
        The others are `service.client.open_client`'s.

    Raises:
        ValueError: for a URL that is not ``ws://`` or ``wss://``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        get_token: Callable[[], Awaitable[str]] | None,
        ssl_context: ssl.SSLContext | None,
        backoff_initial_seconds: float,
        backoff_max_seconds: float,
        connect_timeout_seconds: float,
        max_message_bytes: int,
        write_buffer_bytes: int,
    ) -> None:
        parse_url(url)  # a bad URL is a ValueError now, not a failed connection later
        self.url = url
        self.token = token
        self.failed_attempts = 0
        """Reconnect attempts that failed."""
        self._get_token = get_token
        self._ssl_context = ssl_context
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = backoff_max_seconds
        self._connect_timeout = connect_timeout_seconds
        self._max_message_bytes = max_message_bytes
        self._write_buffer_bytes = write_buffer_bytes

    @property
    def fetches_tokens(self) -> bool:
        """Whether there is a ``get_token`` to call."""
        return self._get_token is not None

    async def connect(self) -> ClientWebSocket:
        """Make one attempt, within ``connect_timeout_seconds``.

        Raises:
            HandshakeRefused: if the server refuses.
            ConnectionFailed: if no connection opened in time, or at all.
        """
        subprotocols = ["clarion"]
        if self.token:
            subprotocols.append(f"bearer.{self.token}")
        try:
            with anyio.fail_after(self._connect_timeout):
                return await connect_websocket(
                    self.url,
                    subprotocols=subprotocols,
                    ssl_context=self._ssl_context,
                    max_message_bytes=self._max_message_bytes,
                    write_buffer_bytes=self._write_buffer_bytes,
                )
        except TimeoutError:
            message = f"{self.url}: no WebSocket within {self._connect_timeout:g} seconds"
            raise ConnectionFailed(message) from None

    async def open(self) -> ClientWebSocket:
        """Open the first connection, fetching a token first if there is none.

        Raises:
            HandshakeRefused, ConnectionFailed: at once, without waiting to retry; only
                a token refused with 108-110 is fetched again, once.
            Exception: whatever ``get_token`` raises.
        """
        fetched = False
        if self.token is None and self._get_token is not None:
            self.token = await self._get_token()
            fetched = True
        try:
            return await self.connect()
        except HandshakeRefused as exc:
            if exc.code not in TOKEN_CODES or self._get_token is None or fetched:
                raise
        self.token = await self._get_token()
        return await self.connect()

    async def reconnect(self, *, fetch_token: bool) -> ClientWebSocket:
        """Open a new connection, retrying refusals that waiting or a new token may
        fix and failed connections, waiting longer after each failure; with
        *fetch_token*, fetch a new token first. Waits until it succeeds or is cancelled.

        Raises:
            HandshakeRefused: for a refusal that neither waiting nor a token may fix.
            ConnectionFailed: if ``get_token`` raises (it is the cause).
        """
        attempt = 0
        while True:
            if fetch_token and self._get_token is not None:
                try:
                    self.token = await self._get_token()
                except Exception as exc:
                    raise ConnectionFailed(f"get_token() failed: {exc!r}") from exc
            ceiling = min(self._backoff_max, self._backoff_initial * 2 ** min(attempt, 32))
            await anyio.sleep(random.uniform(0, ceiling))
            try:
                return await self.connect()
            except HandshakeRefused as exc:
                fetch_token = exc.code in TOKEN_CODES and self._get_token is not None
                busy = exc.code in BUSY_CODES or (
                    exc.code == 0 and exc.status in _BUSY_HTTP_STATUSES
                )
                if not (fetch_token or busy):
                    raise
                logger.info("reconnecting to %s: refused: %s", self.url, exc)
            except ConnectionFailed as exc:
                fetch_token = False
                logger.info("reconnecting to %s: %s", self.url, exc)
            attempt += 1
            self.failed_attempts += 1
