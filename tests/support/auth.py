"""What the tests that authenticate share: the HS256 secret, tokens signed with it, and
an API declared open."""

from __future__ import annotations

import time
from typing import Any, Final

import jwt

from service.settings import ServerSettings

__all__ = ("OPEN_API", "SECRET", "token")

SECRET: Final = "a-test-secret-long-enough-for-every-hs-algorithm-0123456789abcdef"
#: ``auth.required`` needs API keys, or the HTTP API declared open on purpose.
OPEN_API: Final = ServerSettings(api_open=True)


def token(
    sub: str | None = "alice",
    *,
    seconds: float | None = 60,
    key: Any = SECRET,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """A JWT for *sub* that expires in *seconds* (None: no ``exp``), signed with *key*.

    *claims* are added (an ``exp`` among them wins); a claim given as None is left out.
    """
    payload: dict[str, Any] = {"sub": sub}
    if seconds is not None:
        payload["exp"] = int(time.time() + seconds)
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm)
