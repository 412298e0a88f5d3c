"""A read is an access like any other: every operation that reveals a channel's content
or members gets exactly the answer a subscribe would, for every access level.

The matrix: each read (history, presence, recovery with ``since``, and ``GET
/api/presence`` without a key) x each access level (anyone, authenticated, granted,
owner, private with and without a subscription token) x an anonymous and an
authenticated caller, on both brokers and both event loops.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from channels.config import BrokerConfig, ChannelRule, History
from service.settings import AuthSettings, ServerSettings, Settings
from tests.support.asgi import FakeClient, http_request, running_app, websocket
from tests.support.auth import SECRET, token


def rule(match: str, **access: Any) -> ChannelRule:
    return ChannelRule(match=match, presence=True, history=History(size=10), **access)


RULES = [
    rule("pub:*"),
    rule("auth:*", subscribe="authenticated"),
    rule("vip:*", subscribe="granted"),
    rule("user:*", subscribe="owner"),
    rule("secret:*", private=True),
]


def alice(**claims: Any) -> str:
    """A token for Alice; without ``exp``, as it is made when the tests are collected."""
    return token(seconds=None, **claims)


#: Alice's connection token: her channels claim lists vip:1.
ALICE = alice(channels=["vip:1"])
#: A subscription token for secret:1, signed by the backend for Alice.
SECRET_1 = alice(channels=["secret:1"])

#: (channel, subscription token, what a subscribe gets: anonymous, Alice); None allows.
CASES = [
    ("pub:1", None, None, None),
    ("auth:1", None, 202, None),
    ("vip:1", None, 202, None),
    ("vip:2", None, 202, 202),
    ("user:alice", None, 202, None),
    ("user:bob", None, 202, 202),
    ("secret:1", None, 202, 202),
    ("secret:1", SECRET_1, 109, None),
]
IDS = ["anyone", "authenticated", "granted", "not-granted", "owner", "not-owner"]
IDS += ["private-no-token", "private-token"]


async def outcome(client: FakeClient, request: dict[str, Any]) -> tuple[int | None, Any]:
    """Send *request*; return its error code (None for a reply) and the reply."""
    reply = await client.request(request)
    if reply["type"] == "error":
        return int(reply["code"]), None
    return None, reply


async def reads(
    client: FakeClient, user: str | None, channel: str, token: str | None, epoch: str
) -> dict[str, int | None]:
    """Try every read of *channel*, then a subscribe; return each one's outcome.

    What an allowed read returns is checked here: the message published on the channel,
    and *user*, present once subscribed.
    """
    extra = {} if token is None else {"token": token}
    found: dict[str, int | None] = {}
    code, reply = await outcome(client, {"type": "history", "id": 1, "channel": channel, **extra})
    if reply is not None:
        assert [entry["data"] for entry in reply["messages"]] == [f"on {channel}"]
    found["history"] = code
    code, reply = await outcome(client, {"type": "presence", "id": 2, "channel": channel, **extra})
    if reply is not None:
        assert isinstance(reply["clients"], list)
    found["presence"] = code
    since = {"offset": 0, "epoch": epoch}
    request = {"type": "subscribe", "id": 3, "channel": channel, "since": since, **extra}
    code, reply = await outcome(client, request)
    if reply is not None:
        assert reply["recovered"] is True
        assert (await client.receive_object())["data"] == f"on {channel}"
        presence = {"type": "presence", "id": 4, "channel": channel, **extra}
        _, reply = await outcome(client, presence)
        assert reply is not None
        assert user in [info["user"] for info in reply["clients"]]
        assert await client.request({"type": "unsubscribe", "id": 5, "channel": channel}) == {
            "type": "reply",
            "id": 5,
        }
    found["recovery"] = code
    code, _ = await outcome(client, {"type": "subscribe", "id": 6, "channel": channel, **extra})
    found["subscribe"] = code
    if code is None:
        await client.request({"type": "unsubscribe", "id": 7, "channel": channel})
    return found


@pytest.mark.parametrize(("channel", "sub_token", "anonymous", "alice"), CASES, ids=IDS)
async def test_every_read_gets_what_subscribe_gets(
    broker_config: BrokerConfig,
    channel: str,
    sub_token: str | None,
    anonymous: int | None,
    alice: int | None,
) -> None:
    config = Settings(
        broker=broker_config,
        auth=AuthSettings(secret=SECRET),
        server=ServerSettings(api_open=True),
        channels=RULES,
    )
    with anyio.fail_after(20):
        async with running_app(config) as app:
            assert app.hub is not None
            published = await app.hub.publish(
                channel, msgspec.Raw(b'"on %s"' % channel.encode()), trusted=True
            )
            epoch = published.position.epoch
            async with (
                websocket(app) as anonymous_client,
                websocket(app, token=ALICE) as alice_client,
            ):
                got_anonymous = await reads(anonymous_client, None, channel, sub_token, epoch)
                got_alice = await reads(alice_client, "alice", channel, sub_token, epoch)
            # Without an API key, the HTTP API is an anonymous client.
            status, _, body = await http_request(app, "GET", f"/api/presence?channel={channel}")
    ops = ("history", "presence", "recovery", "subscribe")
    assert got_anonymous == dict.fromkeys(ops, anonymous)
    assert got_alice == dict.fromkeys(ops, alice)
    http_anonymous = None if status == 200 else body["code"]
    assert http_anonymous == (None if channel == "pub:1" else 202)
    if status != 200:
        assert status == 403
