"""The webhooks' queue, without a network: what it keeps and what it drops."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from channels.activity import Activity
from channels.publication import ClientInfo
from service.settings import WebhookSettings
from service.webhooks import Webhooks, clarion_endpoint, open_webhooks, sign


def test_the_signature_is_the_hex_hmac_sha256_of_the_body() -> None:
    # RFC 4231, test case 2.
    assert sign("Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


async def test_refused_handshakes_cannot_push_the_other_events_out() -> None:
    settings = WebhookSettings(
        url="http://127.0.0.1:9/hooks",
        events=["connection_refused", "member_joined"],
        secret="a-secret-long-enough",
        batch_seconds=60,  # nothing leaves the queue during the test
        queue_events=10,
    )
    outcomes: Counter[str] = Counter()
    endpoints = [clarion_endpoint(settings, outcomes)]
    webhooks = Webhooks(endpoints)
    async with open_webhooks(endpoints, grace_seconds=0):
        for _ in range(100):
            webhooks.observe(Activity(name="connection_refused", code=109, message="bad"))
        for index in range(5):
            member = ClientInfo(f"c{index}", "alice")
            webhooks.observe(Activity(name="member_joined", channel="room", client=member))
        webhooks.observe(Activity(name="channel_occupied", channel="room"))  # not wanted
    # A tenth of the queue for refusals: 1 kept, 99 dropped; every member event kept.
    assert outcomes == {"dropped": 99}


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:99999/x", "http://127.0.0.1:abc/x", "http://[::1/x", "http:///x"]
)
def test_a_webhook_url_that_cannot_be_reached_is_refused_at_once(url: str) -> None:
    with pytest.raises(ValueError, match="url"):
        WebhookSettings(url=url, events=["channel_occupied"], secret="a-secret-long-enough")


async def test_published_data_waits_within_its_byte_budget() -> None:
    settings = WebhookSettings(
        url="http://127.0.0.1:9/hooks",
        events=["client_published"],
        secret="a-secret-long-enough",
        batch_seconds=60,
        queue_bytes=1000,
    )
    outcomes: Counter[str] = Counter()
    publisher = ClientInfo("c", "alice")
    endpoints = [clarion_endpoint(settings, outcomes)]
    webhooks = Webhooks(endpoints)
    async with open_webhooks(endpoints, grace_seconds=0):
        for _ in range(5):  # 400 bytes each: two fit
            data = msgspec.Raw(b'"' + b"x" * 398 + b'"')
            webhooks.observe(
                Activity(name="client_published", channel="c", client=publisher, data=data)
            )
    assert outcomes == {"dropped": 3}
