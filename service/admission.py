"""Who is let in, and with what: a WebSocket's origin and token, an HTTP request's API
key, and an HTTP request's whole body within its deadline.

Connection slots (``server.max_connections`` and its per-address bound) are counted by
`service.slots`; `served_when_full` says which requests a full node still serves.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Final

import anyio

from service.auth import check_origin
from service.datastructures import route_path
from service.errors import RequestTimeout, RequestTooLarge, Unauthorized

if TYPE_CHECKING:
    from service.auth import Authenticator, Identity
    from service.datastructures import Headers
    from service.settings import ServerSettings
    from service.types import Receive, Scope

__all__ = (
    "PROBES",
    "address",
    "bearer",
    "has_api_key",
    "identify",
    "read_body",
    "served_when_full",
    "trusted",
)

#: Routes served even on a full node: an orchestrator must still see that it lives.
PROBES: Final = frozenset(("/health", "/ready", "/metrics"))


def identify(scope: Scope, auth: Authenticator | None, server: ServerSettings) -> Identity | None:
    """Check a WebSocket handshake's origin and token; None for an anonymous connection.

    Raises:
        OriginNotAllowed: a browser page from a site ``server.allowed_origins`` does not
            list (see `service.auth.check_origin`).
        Unauthenticated, InvalidToken, TokenExpired: see `Authenticator.identify`.
    """
    if auth is None:
        check_origin(scope, server.allowed_origins, query_token=False)
        return None
    return auth.identify(scope, server.allowed_origins)


def trusted(headers: Headers, api_keys: list[str]) -> bool:
    """Whether an HTTP API caller is trusted: it shows one of *api_keys*.

    Without keys the API is open and every caller is an anonymous client (False).

    Raises:
        Unauthorized: keys are set, and the request shows none of them.
    """
    if not api_keys:
        return False
    if bearer(headers) is None:
        raise Unauthorized("this API needs 'Authorization: Bearer <key>'")
    if not has_api_key(headers, api_keys):
        raise Unauthorized("the API key is not valid")
    return True


def has_api_key(headers: Headers, api_keys: list[str]) -> bool:
    """Whether the request carries one of *api_keys*."""
    given = bearer(headers)
    if given is None:
        return False
    # Compare with every key, in constant time, so timing tells nothing about them.
    found = False
    for key in api_keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def bearer(headers: Headers) -> str | None:
    """The credential of an ``Authorization: Bearer`` header, if the request has one."""
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return given if scheme.lower() == "bearer" and given else None


def served_when_full(scope: Scope, headers: Headers, api_keys: list[str]) -> bool:
    """Whether an HTTP request is served on a full node: a caller with a valid API key
    (the backend), or a probe that announces no body (which could arrive slowly)."""
    probe = route_path(scope) in PROBES and _bodiless(scope, headers)
    return probe or has_api_key(headers, api_keys)


def address(scope: Scope) -> str:
    """The client's IP address ("" when the server does not say)."""
    return (scope.get("client") or ("", 0))[0]


async def read_body(
    scope: Scope, headers: Headers, receive: Receive, server: ServerSettings
) -> bytes:
    """Read the request's body to its end, within ``server.handshake_timeout_seconds``.

    Raises:
        RequestTooLarge: once it exceeds ``server.max_request_bytes`` (the rest is not
            read).
        RequestTimeout: if it does not end in time.
    """
    if _bodiless(scope, headers):
        # The server hands the empty body over at once: no deadline, whose timer would
        # cost as much as the rest of a GET.
        return await _read_chunks(receive, server.max_request_bytes)
    deadline = server.handshake_timeout_seconds
    with anyio.move_on_after(deadline):
        return await _read_chunks(receive, server.max_request_bytes)
    raise RequestTimeout(f"the request body did not arrive within {deadline:g}s")


async def _read_chunks(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _bodiless(scope: Scope, headers: Headers) -> bool:
    """Whether an HTTP/1 request has no body (HTTP/2 sends one without announcing it)."""
    if scope.get("http_version") not in {"1.0", "1.1"}:
        return False
    return headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers
