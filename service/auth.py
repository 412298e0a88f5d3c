"""Connection authentication: where a token comes from, and what it proves.

A client sends its JSON Web Token in the ``Sec-WebSocket-Protocol`` header, offering two
subprotocols, ``clarion`` and ``bearer.<token>`` (browsers can set these, and unlike a
URL they do not end up in access logs), or, for clients that cannot, in the ``token``
query parameter. The server selects ``clarion``. The token is checked before the
upgrade: a connection without a valid one is refused with HTTP 401.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import jwt
import msgspec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from channels.errors import ConfigError
from service.datastructures import Headers, QueryParams
from service.errors import InvalidToken, OriginNotAllowed, TokenExpired, Unauthenticated

if TYPE_CHECKING:
    from service.settings import AuthSettings
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

    Reads the public key or JWKS file at construction: build it before the event loop
    starts.

    Raises:
        ConfigError: if the key file cannot be read, or the JWKS file holds no usable key.
    """

    def __init__(self, config: AuthSettings) -> None:
        self.config = config
        self.required = config.required
        self._key: Any = config.secret or ""
        self._jwks: dict[str | None, tuple[Any, str | None]] | None = None
        try:
            if config.public_key_file is not None:
                with open(config.public_key_file, "rb") as file:
                    pem = file.read()
                try:
                    self._key = load_pem_public_key(pem)
                except (ValueError, TypeError):
                    raise ConfigError("auth.public_key_file: not a PEM public key") from None
            elif config.jwks_file is not None:
                with open(config.jwks_file, "rb") as file:
                    self._jwks = _read_jwks(file.read())
        except OSError as exc:
            raise ConfigError(f"auth: cannot read the key file: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"auth.jwks_file: {exc}") from None

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
                raise Unauthenticated("this server needs a token: see the docs' Security page")
            return None
        return self.verify(token)

    def verify(self, token: str) -> Identity:
        """Verify *token*; return its subject and expiry.

        Raises:
            InvalidToken, TokenExpired: a token that does not verify.
        """
        config = self.config
        key, algorithms = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway_seconds,
                options={"require": ["sub"]},
            )
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError) as exc:
            raise TokenExpired(f"token not valid now: {exc}") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        except jwt.PyJWTError as exc:  # a key that does not fit the token's algorithm
            raise InvalidToken(f"invalid token: {type(exc).__name__}") from None
        expires = claims.get("exp")
        listed = claims.get("channels", [])
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
            raise InvalidToken("invalid token: the channels claim must be a list of names")
        return Identity(
            user=str(claims["sub"]),
            expires=float(expires) + config.leeway_seconds if expires is not None else None,
            channels=frozenset(listed),
        )

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        """The key to check *token* with, and the algorithms it may use."""
        algorithms: list[str] = list(self.config.algorithms)
        if self._jwks is None:
            return self._key, algorithms
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid token: {exc}") from None
        found = self._jwks.get(kid) if isinstance(kid, str) else None
        if found is None and kid is None and len(self._jwks) == 1:
            (found,) = self._jwks.values()  # one key: a token may leave kid out
        if found is None:
            raise InvalidToken(f"invalid token: no key in auth.jwks_file has kid {kid!r}")
        key, algorithm = found
        if algorithm is not None:  # a key that names its algorithm is for that one only
            if algorithm not in algorithms:
                raise InvalidToken(f"invalid token: key {kid!r} is for {algorithm}")
            algorithms = [algorithm]
        return key, algorithms

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


class _JWK(msgspec.Struct):
    kty: str
    kid: str | None = None
    alg: str | None = None
    use: str | None = None


class _JWKS(msgspec.Struct):
    keys: list[msgspec.Raw]


def _read_jwks(data: bytes) -> dict[str | None, tuple[Any, str | None]]:
    """The public signing keys of a JWKS document by ``kid``, each with its ``alg``.

    Symmetric (``oct``) and encryption-only keys are left out: a key set is public.
    """
    try:
        document = msgspec.json.decode(data, type=_JWKS)
        keys: dict[str | None, tuple[Any, str | None]] = {}
        for raw in document.keys:
            entry = msgspec.json.decode(raw, type=_JWK)
            if entry.kty == "oct" or entry.use not in {None, "sig"}:
                continue
            if entry.kid in keys:
                raise ValueError(f"two keys have kid {entry.kid!r}")
            try:
                key = jwt.PyJWK.from_json(bytes(raw).decode()).key
            except jwt.PyJWTError as exc:
                # PyJWT's message quotes the whole key, private parts included if any.
                name = type(exc).__name__
                raise ValueError(f"the key {entry.kid!r} is not usable ({name})") from None
            keys[entry.kid] = (key, entry.alg)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a JSON Web Key Set: {exc}") from None
    if not keys:
        raise ValueError("no public signing key")
    return keys


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
