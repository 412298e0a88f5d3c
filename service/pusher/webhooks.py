"""The webhooks of an app of the Pusher door, in Pusher's format (Pusher's "Webhooks"
page): ``{"time_ms", "events": [...]}`` with ``X-Pusher-Key`` (the app's key) and
``X-Pusher-Signature`` (the HMAC-SHA256 of the body with the app's secret), which the
Pusher server libraries' ``validate_webhook`` checks.

The engine's events (`channels.activity`) become Pusher's: ``channel_occupied``,
``channel_vacated``, ``member_added`` and ``member_removed`` (presence channels, with
the ``user_id``), and ``client_event`` (a client's ``client-*`` event, with its ``data``,
the sender's ``socket_id``, and its ``user_id`` on a presence channel; a message a Clarion
client published is none), and ``cache_miss`` (a subscriber of a cache channel found no
last event). Batching, retries and bounds
are those of every webhook (`service.webhooks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec

from service.pusher.names import is_presence, is_private
from service.pusher.protocol import decode_envelope
from service.pusher.signatures import sign
from service.webhooks import Endpoint

if TYPE_CHECKING:
    from collections import Counter

    from channels.activity import Activity, ActivityName
    from service.settings import AppSettings, AppWebhookSettings, PusherWebhookName

__all__ = (
    "KEY_HEADER",
    "SIGNATURE_HEADER",
    "pusher_endpoint",
    "pusher_event",
)

KEY_HEADER: Final = "X-Pusher-Key"
SIGNATURE_HEADER: Final = "X-Pusher-Signature"

#: Which engine event each Pusher event is.
_FROM: Final[dict[PusherWebhookName, ActivityName]] = {
    "channel_occupied": "channel_occupied",
    "channel_vacated": "channel_vacated",
    "member_added": "member_joined",
    "member_removed": "member_left",
    "client_event": "client_published",
    "cache_miss": "cache_miss",
}
_NAMES: Final = {activity: pusher for pusher, activity in _FROM.items()}
_encoder = msgspec.json.Encoder()


def pusher_event(activity: Activity) -> dict[str, Any] | None:
    """*activity* as an event of Pusher's webhooks; None for one Pusher has none for (a
    message published through Clarion's protocol is no client event)."""
    event: dict[str, Any] = {"name": _NAMES[activity.name], "channel": activity.channel}
    client = activity.client
    if activity.name in ("member_joined", "member_left") and client is not None:
        event["user_id"] = client.user if client.user is not None else client.client
    elif activity.name == "client_published":
        envelope = None if activity.data is None else decode_envelope(activity.data)
        channel = activity.channel or ""
        # Pusher's client events: on private and presence channels, where only
        # authorized clients send (through this door) and the user_id is the member's.
        if envelope is None or not envelope.event.startswith("client-") or client is None:
            return None
        if not is_private(channel):
            return None
        event["event"] = envelope.event
        data = envelope.data
        # Pusher's client_event carries the data as a string, JSON for an object.
        is_text = memoryview(data)[:1].tobytes() == b'"'
        event["data"] = msgspec.json.decode(data) if is_text else bytes(data).decode()
        event["socket_id"] = client.client
        if envelope.user_id is not None and is_presence(channel):
            event["user_id"] = envelope.user_id
    return event


def pusher_endpoint(
    app: AppSettings, settings: AppWebhookSettings, outcomes: Counter[str]
) -> Endpoint:
    """An endpoint of *app*'s ``webhooks``."""

    def render(batch: list[Activity], now: float) -> tuple[bytes, list[tuple[str, str]]]:
        events = [event for event in map(pusher_event, batch) if event is not None]
        body = _encoder.encode({"time_ms": int(now * 1000), "events": events})
        return body, [(KEY_HEADER, app.key), (SIGNATURE_HEADER, sign(app.secret, body))]

    wanted = frozenset(_FROM[name] for name in settings.events)
    return Endpoint(settings, wanted, render, outcomes, keep=_has_event)


def _has_event(activity: Activity) -> bool:
    return pusher_event(activity) is not None
