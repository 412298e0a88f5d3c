"""What the tests that authenticate share: the HS256 secret, and an API declared open."""

from __future__ import annotations

from typing import Final

from channels.config import ServerConfig

SECRET: Final = "a-test-secret-long-enough-for-every-hs-algorithm-0123456789abcdef"
#: ``auth.required`` needs API keys, or the HTTP API declared open on purpose.
OPEN_API: Final = ServerConfig(api_open=True)
