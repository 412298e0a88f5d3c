"""Hostile input: random and mutated frames against a running app (hypothesis).

Every frame must get exactly one reply or coded error (a valid ``pong`` gets none), or
end the connection with a documented close code; the node must keep serving another
client; and a connection that leaves must leave no task and no subscription behind.

CI runs a fixed set of examples (``derandomize``). For a longer, random search::

    CLARION_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/service/test_fuzz.py
"""

from __future__ import annotations

import itertools
import json
import os
from contextlib import ExitStack, suppress
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from channels.config import ChannelRule, History, Shape
from service import protocol
from service.closecodes import CloseCode
from service.settings import ServerSettings, Settings
from tests.support.asgi import http_request, running_app, websocket
from tests.support.codes import error_classes

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anyio.from_thread import BlockingPortal

    from service.app import Clarion
    from tests.support.asgi import FakeClient

CONFIG = Settings(
    server=ServerSettings(
        max_request_bytes=2048,
        max_subscriptions=3,
        publish_rate_per_second=1000,
        publish_burst=20,
        outbox_messages=64,
        flush_delay_seconds=0,
        writer_linger_seconds=0,  # so that the task count settles at once
        ping_interval_seconds=None,  # the observer, quiet for minutes, must stay
    ),
    channels=[
        ChannelRule(match="news", history=History(size=5), presence=True, join_leave=True),
        ChannelRule(match="room:*", presence=True),
        ChannelRule(
            match="shaped",
            data=Shape(type="object", fields={"n": Shape(type="integer", minimum=0)}),
        ),
        ChannelRule(match="closed", publish=False),
        ChannelRule(match="private:*", private=True),
        ChannelRule(match="watch", max_message_bytes=64),
    ],
)
#: Every error code a client may be sent, and every close code the server may use.
ERROR_CODES = frozenset(cls.code for cls in error_classes() if cls.code >= 100)
CLOSE_CODES = frozenset({CloseCode.FRAME_TOO_LARGE, CloseCode.SLOW_CONSUMER})
EVENTS = frozenset({"message", "gap", "join", "leave", "restart", "ping"})
EXAMPLES = int(os.environ.get("CLARION_FUZZ_EXAMPLES", "0"))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
channel_names = (
    st.sampled_from(["news", "room:1", "shaped", "closed", "private:1", "nope", "", "a b"])
    | st.just("c" * 300)
    | st.text(max_size=12)
)
requests = st.tuples(
    st.fixed_dictionaries(
        {"type": st.sampled_from(sorted(protocol.OPS)) | json_values},
        optional={
            "id": st.integers() | st.text(max_size=8) | json_values,
            "channel": channel_names | json_values,
            "data": json_values,
            "since": st.fixed_dictionaries({"offset": st.integers(), "epoch": st.text(max_size=12)})
            | json_values,
            "limit": st.integers() | json_values,
            "token": st.text(max_size=40) | json_values,
        },
    ),
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
).map(lambda parts: json.dumps({**parts[1], **parts[0]}))


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A request with one character deleted, inserted or replaced."""
    text = draw(requests)
    where = draw(st.integers(0, len(text)))
    character = draw(st.characters())
    match draw(st.sampled_from(["delete", "insert", "replace"])):
        case "delete":
            return text[:where] + text[where + 1 :]
        case "insert":
            return text[:where] + character + text[where:]
        case _:
            return text[:where] + character + text[where + 1 :]


frames = st.lists(
    requests
    | mutated()
    | st.text(max_size=100)
    | st.binary(max_size=100)
    | st.just('{"type":"ping","id":1,"pad":"' + "x" * 3000 + '"}'),
    min_size=1,
    max_size=8,
)


class Fuzzed:
    """A running app, reached through a portal, with one client that stays subscribed."""

    def __init__(self, portal: BlockingPortal, app: Clarion, observer: FakeClient) -> None:
        self.portal = portal
        self.app = app
        self.observer = observer
        self.marks = itertools.count()
        self.tasks = portal.call(_task_count)


@pytest.fixture(scope="module")
def fuzzed(anyio_backend: str) -> Iterator[Fuzzed]:
    with ExitStack() as stack:
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal(anyio_backend))
        app = stack.enter_context(portal.wrap_async_context_manager(running_app(CONFIG)))
        observer = stack.enter_context(portal.wrap_async_context_manager(websocket(app)))
        reply = portal.call(observer.request, {"type": "subscribe", "id": 1, "channel": "watch"})
        assert reply["type"] == "reply"
        yield Fuzzed(portal, app, observer)


async def _task_count() -> int:
    await anyio.wait_all_tasks_blocked()
    return len(anyio.get_running_tasks())


@settings(
    max_examples=EXAMPLES or 150,
    derandomize=not EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(sent=frames)
def test_hostile_frames_get_coded_answers_and_leak_nothing(
    fuzzed: Fuzzed, sent: list[str | bytes]
) -> None:
    fuzzed.portal.call(_exchange, fuzzed, sent)


async def _exchange(fuzzed: Fuzzed, sent: list[str | bytes]) -> None:
    app = fuzzed.app
    hub = app.hub
    assert hub is not None
    with anyio.fail_after(10):
        async with websocket(app) as client:
            for index, frame in enumerate(sent):
                # The server may have closed already (after an oversize frame): the
                # close is then what _answers_until reads.
                with suppress(anyio.BrokenResourceError):
                    if isinstance(frame, bytes):
                        await client.send_bytes(frame)
                    else:
                        await client.send_text(frame)
                    await client.send_json({"type": "ping", "id": f"end-{index}"})
                answers = await _answers_until(client, f"end-{index}")
                if answers is None:
                    break  # closed with a documented code: nothing more to send
                assert len(answers) == 1 or (not answers and _looks_like_pong(frame)), (
                    frame,
                    answers,
                )
        # The connection left: no task and no subscription of it remain.
        assert await _task_count() == fuzzed.tasks
        statistics = hub.statistics()
        assert (statistics.connections, statistics.subscriptions) == (1, 1)
        # And the node still serves the other client.
        mark = next(fuzzed.marks)
        body = msgspec.json.encode({"channel": "watch", "data": mark})
        assert (await http_request(app, "POST", "/api/publish", body))[0] == 200
        while (received := await fuzzed.observer.receive_object())["type"] != "message":
            assert received["type"] in {"message", "ping"}
        assert received["data"] == mark


async def _answers_until(client: FakeClient, end: str) -> list[dict[str, Any]] | None:
    """The replies and errors before the reply *end*; None when the server closed."""
    answers: list[dict[str, Any]] = []
    while True:
        message = await client.receive()
        if message["type"] == "websocket.close":
            assert message["code"] in CLOSE_CODES, message
            return None
        assert message["type"] == "websocket.send", message
        decoded = msgspec.json.decode(message["text"])
        for item in decoded if isinstance(decoded, list) else [decoded]:
            kind = item["type"]
            if kind == "reply" and item.get("id") == end:
                return answers
            if kind == "error":
                assert item["code"] in ERROR_CODES, item
                assert isinstance(item["message"], str), item
                assert item["message"], item
            else:
                assert kind in EVENTS | {"reply"}, item
            if kind in {"reply", "error"}:
                answers.append(item)


def _looks_like_pong(frame: str | bytes) -> bool:
    """Whether *frame* may be a valid ``pong``, the only request that gets no answer."""
    return b"pong" in (frame if isinstance(frame, bytes) else frame.encode(errors="replace"))
