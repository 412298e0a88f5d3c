"""The ``clarion`` client commands as the docs show them: ``clarion subscribe`` and
``clarion publish``, run as processes of this virtualenv."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio

if TYPE_CHECKING:
    from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ("CLARION", "MAX_LINE_BYTES", "read_line", "wait_subscribed")

#: ``clarion`` in this virtualenv.
CLARION: Final = str(Path(sys.executable).parent / "clarion")
#: The stderr line ``clarion subscribe`` writes once a channel is subscribed.
SUBSCRIBED: Final = re.compile(r"clarion: subscribed to (\S+)")
#: The longest line ``clarion subscribe`` is expected to write.
MAX_LINE_BYTES: Final = 4096


async def read_line(stream: BufferedByteReceiveStream, name: str) -> str:
    """The next line of *stream* (the process's *name*, for the message), without its
    newline.

    Raises:
        AssertionError: if the stream ends first.
    """
    try:
        return (await stream.receive_until(b"\n", MAX_LINE_BYTES)).decode()
    except (anyio.IncompleteRead, anyio.EndOfStream):
        raise AssertionError(f"clarion subscribe ended its {name} early") from None


async def wait_subscribed(stderr: BufferedByteReceiveStream, channels: set[str]) -> list[str]:
    """Read ``clarion subscribe``'s stderr until it says it subscribed to *channels*;
    return the lines read."""
    subscribed: set[str] = set()
    read: list[str] = []
    while subscribed != channels:
        try:
            read.append(await read_line(stderr, "stderr"))
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {read}") from None
        if (found := SUBSCRIBED.match(read[-1])) is not None:
            subscribed.add(found[1])
    return read
