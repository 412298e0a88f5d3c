"""Connection authentication against a real hypercorn: tokens in the handshake."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import TYPE_CHECKING, Any

import anyio
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from channels.config import ChannelRule
from service.settings import AuthSettings, ServerSettings, Settings
from tests.support.auth import OPEN_API, SECRET, token as signed
from tests.support.server import http_call, running_server
from tests.support.wsclient import HandshakeRefused, connect, subscribe

if TYPE_CHECKING:
    from pathlib import Path

    from service.runner import Backend

CONFIG = Settings(
    server=OPEN_API,
    auth=AuthSettings(required=True, secret=SECRET, audience="clarion", leeway_seconds=0),
    channels=[ChannelRule(match="*", presence=True)],
)


def token(**claims: Any) -> str:
    """Alice's token for this module's server, whose ``auth.audience`` is clarion."""
    return signed(**{"aud": "clarion", **claims})


def part(value: bytes) -> bytes:
    return base64.urlsafe_b64encode(value).rstrip(b"=")


def hs256_signed_with(key: bytes, claims: dict[str, Any]) -> str:
    """A token signed by hand (PyJWT refuses to sign HS256 with a PEM key)."""
    head = part(b'{"alg":"HS256","typ":"JWT"}') + b"." + part(msgspec.json.encode(claims))
    signature = hmac.new(key, head, hashlib.sha256).digest()
    return (head + b"." + part(signature)).decode()


def unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token: no signature at all."""
    head = part(b'{"alg":"none","typ":"JWT"}') + b"." + part(msgspec.json.encode(claims))
    return (head + b".").decode()


async def refused(url: str, **options: Any) -> tuple[int, int]:
    """Connect expecting a refusal; return the HTTP status and the error code."""
    with pytest.raises(HandshakeRefused) as caught:
        async with connect(url, **options):
            pass
    return caught.value.status, msgspec.json.decode(caught.value.body)["code"]


async def test_a_valid_token_lets_a_user_in(anyio_backend: Backend, free_tcp_port: int) -> None:
    with anyio.fail_after(15):
        async with running_server(CONFIG, anyio_backend, free_tcp_port) as server:
            offered = ["clarion", f"bearer.{token()}"]
            async with connect(server.ws_url, subprotocols=offered) as client:
                assert client.subprotocol == "clarion"
                await subscribe(client, "room")
                reply = await client.request({"type": "presence", "id": 1, "channel": "room"})
                assert [entry["user"] for entry in reply["clients"]] == ["alice"]
            async with connect(f"{server.ws_url}?token={token(sub='bob')}") as client:
                assert (await client.request({"type": "ping", "id": 2}))["id"] == 2


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: None, 108),
        (lambda: token(exp=int(time.time()) - 10), 110),
        (lambda: token(nbf=int(time.time()) + 60), 110),
        (lambda: token(key=SECRET[::-1]), 109),
        (lambda: token(algorithm="HS384"), 109),
        (lambda: unsigned({"sub": "alice", "aud": "clarion", "exp": int(time.time()) + 60}), 109),
        (lambda: token(aud="someone-else"), 109),
        (lambda: "not.a.token", 109),
    ],
    ids=[
        "missing",
        "expired",
        "not-yet-valid",
        "wrong-key",
        "wrong-alg",
        "alg-none",
        "wrong-audience",
        "malformed",
    ],
)
async def test_a_bad_token_is_refused_before_the_upgrade(
    anyio_backend: Backend, free_tcp_port: int, make: Any, code: int
) -> None:
    with anyio.fail_after(15):
        async with running_server(CONFIG, anyio_backend, free_tcp_port) as server:
            value = make()
            offered = ["clarion"] if value is None else ["clarion", f"bearer.{value}"]
            assert await refused(server.ws_url, subprotocols=offered) == (401, code)


async def test_rs256_with_a_public_key_file_refuses_algorithm_confusion(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "public.pem").write_bytes(public)
    auth = AuthSettings(
        required=True, algorithms=["RS256"], public_key_file=str(tmp_path / "public.pem")
    )
    config = Settings(server=OPEN_API, auth=auth)
    with anyio.fail_after(15):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            good = token(key=private, algorithm="RS256", aud=None)
            async with connect(server.ws_url, subprotocols=["clarion", f"bearer.{good}"]):
                pass
            # The public key used as an HMAC secret: the classic confusion attack.
            forged = hs256_signed_with(public, {"sub": "mallory", "exp": int(time.time()) + 60})
            offered = ["clarion", f"bearer.{forged}"]
            assert await refused(server.ws_url, subprotocols=offered) == (401, 109)


def jwk(private: Any, kid: str, **extra: str) -> dict[str, Any]:
    """The public half of *private* as a JSON Web Key."""
    public = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**public, "kid": kid, **extra}


async def test_a_jwks_file_picks_the_key_by_kid(
    anyio_backend: Backend, free_tcp_port: int, tmp_path: Path
) -> None:
    old, new, stranger = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)
    )
    keys = [jwk(old, "2025", alg="RS256"), jwk(new, "2026"), {"kty": "oct", "k": "c2VjcmV0"}]
    (tmp_path / "jwks.json").write_bytes(msgspec.json.encode({"keys": keys}))
    auth = AuthSettings(
        required=True, algorithms=["RS256", "RS512"], jwks_file=str(tmp_path / "jwks.json")
    )
    with anyio.fail_after(15):
        async with running_server(
            Settings(server=OPEN_API, auth=auth), anyio_backend, free_tcp_port
        ) as server:
            url = server.ws_url
            for key, kid, algorithm in [(old, "2025", "RS256"), (new, "2026", "RS512")]:
                good = jwt.encode(
                    {"sub": "alice", "exp": int(time.time()) + 60},
                    key,
                    algorithm,
                    headers={"kid": kid},
                )
                async with connect(url, subprotocols=["clarion", f"bearer.{good}"]):
                    pass

            def signed(key: Any, algorithm: str = "RS256", **headers: Any) -> list[str]:
                claims = {"sub": "mallory", "exp": int(time.time()) + 60}
                return ["clarion", f"bearer.{jwt.encode(claims, key, algorithm, headers)}"]

            # A key of another set; a known kid with the wrong key; no kid among several
            # keys; a key used with an algorithm other than its own.
            assert await refused(url, subprotocols=signed(stranger, kid="2026")) == (401, 109)
            assert await refused(url, subprotocols=signed(new, kid="2025")) == (401, 109)
            assert await refused(url, subprotocols=signed(new)) == (401, 109)
            assert await refused(url, subprotocols=signed(old, "RS512", kid="2025")) == (401, 109)


async def test_an_expiring_token_closes_with_4001_unless_refreshed(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(20):
        async with running_server(CONFIG, anyio_backend, free_tcp_port) as server:
            soon = token(exp=int(time.time()) + 2)
            async with (
                connect(server.ws_url, subprotocols=["clarion", f"bearer.{soon}"]) as kept,
                connect(server.ws_url, subprotocols=["clarion", f"bearer.{soon}"]) as lapsed,
            ):
                wrong = await kept.request({"type": "refresh", "id": 1, "token": token(sub="bob")})
                assert (wrong["type"], wrong["code"]) == ("error", 109)
                reply = await kept.request({"type": "refresh", "id": 2, "token": token()})
                assert reply == {"type": "reply", "id": 2}
                closed = await lapsed.wait_closed()
                assert (closed.code, closed.reason) == (4001, "token expired")
                # The refreshed connection outlived the first token.
                assert (await kept.request({"type": "ping", "id": 3}))["id"] == 3


PERMISSIONS = Settings(
    auth=AuthSettings(secret=SECRET, audience="clarion"),
    channels=[
        ChannelRule(match="user:*", subscribe="owner", publish=False),
        ChannelRule(match="vip:*", subscribe="granted"),
        ChannelRule(match="members", subscribe="authenticated", publish="authenticated"),
        ChannelRule(match="secret:*", private=True),
        ChannelRule(match="*"),
    ],
)


async def test_channel_permissions_follow_the_token(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    def sub(channel: str, **extra: Any) -> dict[str, Any]:
        return {"type": "subscribe", "id": channel, "channel": channel, **extra}

    with anyio.fail_after(15):
        async with running_server(PERMISSIONS, anyio_backend, free_tcp_port) as server:
            alice_token = token(channels=["vip:1"])
            async with (
                connect(server.ws_url, subprotocols=["clarion", f"bearer.{alice_token}"]) as alice,
                connect(server.ws_url) as anonymous,
            ):
                assert await alice.code_of(sub("user:alice")) is None
                assert await alice.code_of(sub("user:bob")) == 202
                assert await alice.code_of(sub("vip:1")) is None
                assert await alice.code_of(sub("vip:2")) == 202
                assert await anonymous.code_of(sub("members")) == 202
                assert await alice.code_of(sub("members")) is None
                publish = {"type": "publish", "id": 1, "channel": "members", "data": 1}
                assert await anonymous.code_of(publish) == 202
                assert await alice.code_of({**publish, "channel": "user:alice"}) == 202
                assert await alice.code_of(sub("secret:x")) == 202
                wrong = token(channels=["secret:y"])
                assert await alice.code_of(sub("secret:x", token=wrong)) == 109
                other_user = token(sub="bob", channels=["secret:x"])
                assert await alice.code_of(sub("secret:x", token=other_user)) == 109
                right = token(channels=["secret:x"])
                assert await alice.code_of(sub("secret:x", token=right)) is None
                assert await anonymous.code_of(sub("secret:x", token=right)) == 109
                assert await anonymous.code_of(sub("open")) is None


async def test_a_foreign_origin_is_refused(anyio_backend: Backend, free_tcp_port: int) -> None:
    server_config = msgspec.structs.replace(
        Settings().server, allowed_origins=["https://app.example.com"]
    )
    config = Settings(server=server_config)
    with anyio.fail_after(15):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            status_code = await refused(server.ws_url, origin="https://evil.example.com")
            assert status_code == (403, 111)
            async with connect(server.ws_url, origin="https://app.example.com"):
                pass
            async with connect(server.ws_url, origin=f"http://127.0.0.1:{free_tcp_port}"):
                pass  # the server's own host
            async with connect(server.ws_url):
                pass  # not a browser: no Origin


async def test_a_query_token_from_another_site_is_refused_by_default(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    with anyio.fail_after(15):
        async with running_server(CONFIG, anyio_backend, free_tcp_port) as server:
            url = f"{server.ws_url}?token={token()}"
            assert await refused(url, origin="https://evil.example.com") == (403, 111)
            async with connect(url):
                pass


async def test_the_http_api_needs_one_of_its_keys(
    anyio_backend: Backend, free_tcp_port: int
) -> None:
    config = Settings(server=ServerSettings(api_keys=["key-one", "key-two"]))
    body = b'{"channel":"news","data":"hello"}'
    with anyio.fail_after(15):
        async with running_server(config, anyio_backend, free_tcp_port) as server:
            async with connect(server.ws_url) as client:
                await subscribe(client, "news")
                for headers in [
                    "",
                    "authorization: Bearer key-three\r\n",
                    "authorization: key-one\r\n",
                ]:
                    status, reply = await http_call(server, "POST", "/api/publish", body, headers)
                    assert (status, reply["code"]) == (401, 106)
                status, reply = await http_call(server, "GET", "/api/presence?channel=news")
                assert (status, reply["code"]) == (401, 106)
                right = "authorization: Bearer key-two\r\n"
                status, reply = await http_call(server, "POST", "/api/publish", body, right)
                assert status == 200
                message = await client.receive_object()
                assert (message["channel"], message["data"]) == ("news", "hello")
