"""Text frames as `service.framewriter` builds them, against wsproto's own framing."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, cast

import anyio
import pytest
from hypercorn.events import RawData
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from service.framewriter import SocketFrameWriter, text_frame

if TYPE_CHECKING:
    from hypercorn.events import Event
    from hypercorn.protocol.h11 import H11Protocol


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


class Protocol:
    """Stands in for hypercorn's HTTP/1.1 protocol, whose ``send`` the writer wraps."""

    def __init__(self) -> None:
        self.sent: list[Event] = []

    async def send(self, event: Event) -> None:
        self.sent.append(event)


def socket_writer(sock: socket.socket) -> SocketFrameWriter:
    sock.setblocking(False)  # as hypercorn's trio worker holds it
    return SocketFrameWriter(cast("H11Protocol", Protocol()), sock, anyio.Lock())


async def test_writing_to_a_client_that_has_gone_is_a_broken_resource(anyio_backend: str) -> None:
    ours, theirs = socket.socketpair()
    with ours:
        writer = socket_writer(ours)
        theirs.close()
        with pytest.raises(anyio.BrokenResourceError, match="the connection broke") as caught:
            writer.write_nowait(b'"hello"')
        assert isinstance(caught.value.__cause__, OSError)


async def test_a_client_that_goes_mid_frame_fails_the_wait_and_drops_the_rest(
    anyio_backend: str,
) -> None:
    ours, theirs = socket.socketpair()
    with ours:
        writer = socket_writer(ours)
        with theirs:
            assert not writer.write_nowait(b"x" * (4 << 20))  # more than the kernel takes
            assert writer.partial_writes == 1
            assert not writer.writable()
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError, match="broke"):
            await writer.wait_writable()
        assert writer.writable()  # nothing is left to finish on the broken socket


@pytest.mark.parametrize(
    ("answer", "open_after"),
    [
        (b"HTTP/1.1 101 \r\nupgrade: websocket\r\n\r\n", True),
        (b"HTTP/1.1 400 \r\ncontent-length: 0\r\nconnection: close\r\n\r\n", False),
        (b"\x88\x02\x03\xe8", False),  # a close frame
    ],
    ids=["accepted", "refused", "closing"],
)
async def test_no_frame_goes_out_after_a_refusal_or_a_close(
    anyio_backend: str, answer: bytes, open_after: bool
) -> None:
    # On trio a handshake whose early bytes hypercorn refused once had the Pusher door's
    # first frame written straight to the socket, after the 400 and without a 101.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        protocol = Protocol()
        ours.setblocking(False)
        writer = SocketFrameWriter(cast("H11Protocol", protocol), ours, anyio.Lock())
        await cast("H11Protocol", protocol).send(RawData(answer))  # hypercorn's own send
        assert protocol.sent == [RawData(answer)]
        # The sender asks before each frame (channels.sender).
        if open_after:
            assert writer.writable()
        else:
            with pytest.raises(anyio.BrokenResourceError, match="closing"):
                writer.writable()
