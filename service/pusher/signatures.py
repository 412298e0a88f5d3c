"""The Pusher signatures: HMAC-SHA256 with an app's secret, in hexadecimal, compared in
constant time.

- A private or presence channel's authorization, ``KEY:HMAC(socket_id:channel)`` or
  ``KEY:HMAC(socket_id:channel:channel_data)``.
- A user's sign-in, ``KEY:HMAC(socket_id::user::user_data)``.
- An HTTP API request: ``auth_signature`` is the HMAC of ``METHOD\\nPATH\\nQUERY``, the
  query's other parameters sorted by name, ``name=value`` joined with ``&``, unescaped.
- A webhook's body, sent in ``X-Pusher-Signature``.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = (
    "authorization_ok",
    "request_string",
    "sign",
)


def sign(secret: str, text: str | bytes) -> str:
    """The HMAC-SHA256 of *text* with *secret*, in hexadecimal."""
    message = text.encode() if isinstance(text, str) else text
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def authorization_ok(key: str, secret: str, auth: str, text: str) -> bool:
    """Whether *auth* is ``KEY:SIGNATURE`` for *key*, signing *text* with *secret*."""
    shown_key, _, signature = auth.partition(":")
    expected = sign(secret, text)
    # Both compared, in constant time, whichever is wrong.
    key_ok = hmac.compare_digest(shown_key.encode(), key.encode())
    return hmac.compare_digest(signature.encode(), expected.encode()) and key_ok


def request_string(method: str, path: str, query: Iterable[tuple[str, str]]) -> str:
    """What an HTTP API request's ``auth_signature`` signs: *query* without
    ``auth_signature``, names in lower case, sorted."""
    pairs = sorted((name.lower(), value) for name, value in query if name != "auth_signature")
    return "\n".join((method, path, "&".join(f"{name}={value}" for name, value in pairs)))
