"""Key files: a bad one is refused when read, and no key material reaches the error."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from channels.config import AuthConfig
from channels.errors import ConfigError
from service.auth import Authenticator

if TYPE_CHECKING:
    from pathlib import Path


def test_a_public_key_file_that_is_not_a_pem_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    config = AuthConfig(algorithms=["RS256"], public_key_file=str(key))
    with pytest.raises(ConfigError, match=r"auth\.public_key_file: not a PEM public key"):
        Authenticator(config)


def test_an_unusable_jwks_key_is_named_by_kid_without_its_contents(tmp_path: Path) -> None:
    secret_part = "c2VjcmV0LXByaXZhdGUtZXhwb25lbnQ"
    jwks = tmp_path / "keys.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "EC", "kid": "k1", "d": secret_part}]}))
    config = AuthConfig(algorithms=["ES256"], jwks_file=str(jwks))
    with pytest.raises(ConfigError) as refused:
        Authenticator(config)
    assert "the key 'k1' is not usable" in str(refused.value)
    assert secret_part not in str(refused.value)
