"""Key files: a bad one is refused when read, and no key material reaches the error."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from channels.errors import ConfigError
from service.auth import Authenticator
from service.errors import InvalidToken
from service.settings import AuthSettings

if TYPE_CHECKING:
    from pathlib import Path


def test_a_public_key_file_that_is_not_a_pem_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    config = AuthSettings(algorithms=["RS256"], public_key_file=str(key))
    with pytest.raises(ConfigError, match=r"auth\.public_key_file: not a PEM public key"):
        Authenticator(config)


def test_an_unusable_jwks_key_is_named_by_kid_without_its_contents(tmp_path: Path) -> None:
    secret_part = "c2VjcmV0LXByaXZhdGUtZXhwb25lbnQ"
    jwks = tmp_path / "keys.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "EC", "kid": "k1", "d": secret_part}]}))
    config = AuthSettings(algorithms=["ES256"], jwks_file=str(jwks))
    with pytest.raises(ConfigError) as refused:
        Authenticator(config)
    assert "the key 'k1' is not usable" in str(refused.value)
    assert secret_part not in str(refused.value)


def rsa_jwk(kid: str | None, alg: str | None = None) -> tuple[dict[str, Any], Any]:
    """A public RSA JWK (with *kid* and *alg* when given) and its private key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.pop("kid", None)
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    return jwk, private


def authenticator(tmp_path: Path, *keys: dict[str, Any]) -> Authenticator:
    jwks = tmp_path / "keys.json"
    jwks.write_text(json.dumps({"keys": list(keys)}))
    return Authenticator(AuthSettings(algorithms=["RS256", "RS384"], jwks_file=str(jwks)))


def test_jwks_keys_are_picked_by_kid_and_held_to_their_algorithm(tmp_path: Path) -> None:
    first, first_private = rsa_jwk("a", alg="RS384")
    second, second_private = rsa_jwk("b")
    auth = authenticator(tmp_path, first, second)
    claims = {"sub": "alice", "channels": ["x"]}
    signed = jwt.encode(claims, first_private, "RS384", headers={"kid": "a"})
    assert auth.verify(signed).channels == frozenset({"x"})
    wrong_alg = jwt.encode(claims, first_private, "RS256", headers={"kid": "a"})
    with pytest.raises(InvalidToken, match="alg value is not allowed"):
        auth.verify(wrong_alg)  # the key is for RS384 only, though RS256 is configured
    no_kid = jwt.encode(claims, second_private, "RS256")
    with pytest.raises(InvalidToken, match="has kid None"):
        auth.verify(no_kid)  # two keys: a token must name one
    with pytest.raises(InvalidToken, match="invalid token"):
        auth.verify("not-a-token")
    bad_claim = jwt.encode(
        {"sub": "alice", "channels": "x"}, second_private, "RS256", headers={"kid": "b"}
    )
    with pytest.raises(InvalidToken, match="channels claim must be a list"):
        auth.verify(bad_claim)


def test_a_jwks_of_one_key_lets_a_token_leave_kid_out(tmp_path: Path) -> None:
    only, private = rsa_jwk(None)
    auth = authenticator(tmp_path, only)
    assert auth.verify(jwt.encode({"sub": "bob"}, private, "RS256")).user == "bob"


def test_two_jwks_keys_with_one_kid_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="two keys have kid 'a'"):
        authenticator(tmp_path, rsa_jwk("a")[0], rsa_jwk("a")[0])


def test_a_jwks_key_for_an_algorithm_not_configured_is_refused(tmp_path: Path) -> None:
    key, private = rsa_jwk("c", alg="RS512")
    auth = authenticator(tmp_path, key)
    with pytest.raises(InvalidToken, match="key 'c' is for RS512"):
        auth.verify(jwt.encode({"sub": "eve"}, private, "RS512", headers={"kid": "c"}))
