"""Connection authentication: where a token comes from, and what it proves.

A client sends its JSON Web Token in the ``Sec-WebSocket-Protocol`` header, offering two
subprotocols, ``clarion`` and ``bearer.<token>`` (browsers can set these, and unlike a
URL they do not end up in access logs), or, for clients that cannot, in the ``token``
query parameter. The server selects ``clarion``. The token is checked before the
upgrade: a connection without a valid one is refused with HTTP 401.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import jwt
import msgspec

from service.datastructures import Headers, QueryParams
from service.protocol import InvalidToken, OriginNotAllowed, TokenExpired, Unauthenticated

if TYPE_CHECKING:
    from channels.config import AuthConfig
    from service.types import Scope

__all__ = (
    "Authenticator",
    "Identity",
    "SUBPROTOCOL",
    "TOKEN_PREFIX",
    "check_origin",
    "seconds_left",
)

#: The subprotocol the server selects when a client offers it.
SUBPROTOCOL = "clarion"
#: The prefix of the subprotocol entry that carries the token.
TOKEN_PREFIX = "bearer."


class Identity(msgspec.Struct, frozen=True):
    """Who a verified token says the client is, what it may do, and until when.

    ``expires`` is a Unix time, or None for a token without ``exp``; ``channels`` are
    the names its ``channels`` claim lists (rules with ``granted`` access).
    """

    user: str | None
    expires: float | None
    channels: frozenset[str] = frozenset()


class Authenticator:
    """Verify tokens against the configured key, algorithms, audience and issuer.

    Reads the public key file at construction: build it before the event loop starts.
    """

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.required = config.required
        if config.public_key_file is not None:
            with open(config.public_key_file, "rb") as file:
                self._key: str | bytes = file.read()
        else:
            self._key = config.secret or ""

    def token(self, scope: Scope) -> tuple[str | None, bool]:
        """The token the handshake carries, if any (subprotocol first, then query), and
        whether it came in the query string."""
        offered = Headers(scope["headers"]).get("sec-websocket-protocol", "")
        for name in offered.split(","):
            name = name.strip()
            if name.startswith(TOKEN_PREFIX):
                return name[len(TOKEN_PREFIX) :], False
        token = QueryParams(scope.get("query_string", b"")).get("token")
        return token, token is not None

    def identify(self, scope: Scope, allowed_origins: list[str]) -> Identity | None:
        """Check the handshake's origin and token; None for an anonymous connection.

        Raises:
            OriginNotAllowed: see `check_origin`.
            Unauthenticated: no token, and one is required.
            InvalidToken, TokenExpired: a token that does not verify.
        """
        token, from_query = self.token(scope)
        check_origin(scope, allowed_origins, query_token=from_query)
        if token is None:
            if self.required:
                raise Unauthenticated("this server needs a token: see the README's Security")
            return None
        return self.verify(token)

    def verify(self, token: str) -> Identity:
        """Verify *token*; return its subject and expiry.

        Raises:
            InvalidToken, TokenExpired: a token that does not verify.
        """
        config = self.config
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=list(config.algorithms),
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["sub"]},
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
            raise TokenExpired(f"token not valid now: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        expires = claims.get("exp")
        listed = claims.get("channels", [])
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
            raise InvalidToken("invalid token: the channels claim must be a list of names")
        return Identity(
            user=str(claims["sub"]),
            expires=float(expires) + config.leeway_seconds if expires is not None else None,
            channels=frozenset(listed),
        )

    def verify_subscription(self, token: str, channel: str, user: str | None) -> None:
        """Check a subscription token: signed by the backend for *channel* and *user*.

        Raises:
            InvalidToken, TokenExpired: a token that does not verify, or is for another
                channel or user.
        """
        if user is None:
            raise InvalidToken("a subscription token needs an authenticated connection")
        identity = self.verify(token)
        if identity.user != user or identity.channels != frozenset([channel]):
            raise InvalidToken(
                f"the subscription token is not for {channel!r} and this user: it needs "
                f"sub = the user and channels = [{channel!r}]"
            )


def seconds_left(identity: Identity) -> float | None:
    """How long *identity*'s token stays valid from now (None: no expiry)."""
    if identity.expires is None:
        return None
    return max(0.0, identity.expires - time.time())


def check_origin(scope: Scope, allowed: list[str], *, query_token: bool) -> None:
    """Refuse a browser page from another site (cross-site WebSocket hijacking).

    The check applies when *allowed* lists origins, or when the token came in the query
    string; a handshake without ``Origin`` (not a browser) or from the server's own host
    always passes.

    Raises:
        OriginNotAllowed: for any other origin.
    """
    if not allowed and not query_token:
        return
    headers = Headers(scope["headers"])
    origin = headers.get("origin")
    if origin is None or origin in allowed:
        return
    host = headers.get("host")
    if host is not None and origin.split("://", 1)[-1] == host:
        return
    raise OriginNotAllowed(f"origin {origin!r} may not connect: add it to server.allowed_origins")
