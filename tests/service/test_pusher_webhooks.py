"""What the engine's events are in Pusher's webhooks."""

from __future__ import annotations

import msgspec
import pytest

from channels.activity import Activity
from channels.publication import ClientInfo
from service.pusher.protocol import Envelope, encode_envelope
from service.pusher.webhooks import pusher_event

ANN = ClientInfo("1.2", "ann")


def client_event(envelope: Envelope) -> Activity:
    data = encode_envelope(envelope)
    return Activity(name="client_published", channel="presence-r", client=ANN, data=data)


def test_a_client_event_carries_its_data_as_a_string_and_its_sender() -> None:
    activity = client_event(Envelope("client-hi", msgspec.Raw(b'{"x":1}'), "ann", "1.2"))
    assert pusher_event(activity) == {
        "name": "client_event",
        "channel": "presence-r",
        "event": "client-hi",
        "data": '{"x":1}',
        "socket_id": "1.2",
        "user_id": "ann",
    }
    text = client_event(Envelope("client-hi", msgspec.Raw(b'"plain"')))
    assert pusher_event(text) == {
        "name": "client_event",
        "channel": "presence-r",
        "event": "client-hi",
        "data": "plain",
        "socket_id": "1.2",
    }


@pytest.mark.parametrize(
    "data",
    [b'{"x": 1}', encode_envelope(Envelope("message", msgspec.Raw(b"1")))],
    ids=["clarion-message", "not-a-client-event"],
)
def test_what_a_clarion_client_published_is_no_client_event(data: bytes) -> None:
    activity = Activity(name="client_published", channel="news", client=ANN, data=msgspec.Raw(data))
    assert pusher_event(activity) is None


def test_only_a_private_channels_client_events_are_reported_and_user_ids_only_on_presence() -> None:
    envelope = encode_envelope(Envelope("client-x", msgspec.Raw(b"1"), "admin", "1.2"))
    public = Activity(name="client_published", channel="news", client=ANN, data=envelope)
    assert pusher_event(public) is None
    private = Activity(name="client_published", channel="private-x", client=ANN, data=envelope)
    reported = pusher_event(private)
    assert reported is not None
    assert "user_id" not in reported


def test_members_and_occupancy() -> None:
    joined = Activity(name="member_joined", channel="presence-r", client=ANN)
    assert pusher_event(joined) == {
        "name": "member_added",
        "channel": "presence-r",
        "user_id": "ann",
    }
    vacated = Activity(name="channel_vacated", channel="news")
    assert pusher_event(vacated) == {"name": "channel_vacated", "channel": "news"}
