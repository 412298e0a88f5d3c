"""Text frames as `service.framewriter` builds them, against wsproto's own framing."""

from __future__ import annotations

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from service.framewriter import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
def test_text_frames_are_framed_as_wsproto_frames_them(size: int) -> None:
    text = ("aé" * size)[:size]
    reference = Connection(ConnectionType.SERVER).send(TextMessage(data=text))
    assert text_frame(text.encode()) == reference


def test_equal_payloads_that_are_different_objects_are_framed_alike() -> None:
    first, second = bytes(b"a" * 200), bytearray(b"b" * 200)
    assert text_frame(first)[4:] == first
    assert text_frame(bytes(second))[4:] == second
    assert text_frame(first)[4:] == first  # the one-entry cache follows the last payload
