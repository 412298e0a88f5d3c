"""What a node sent: frames, messages, bytes, and how long messages waited to go out.

Outboxes count into one `Traffic` per hub as they hand out frames: a few integer
additions per frame, no lock, no label lookup. Metrics read the counters when scraped.
"""

from __future__ import annotations

import bisect
from typing import Final

__all__ = ("SEND_DELAY_BUCKETS_SECONDS", "Traffic")

#: Upper bounds of the send-delay histogram's buckets (one more bucket holds the rest).
SEND_DELAY_BUCKETS_SECONDS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Traffic:
    """Counters of what a node's outboxes handed out to be sent, since it started.

    Attributes:
        frames: WebSocket frames.
        messages: JSON objects in those frames: channel messages, replies, events and
            notices (``messages / frames`` is the coalescing ratio).
        deliveries: channel messages among them (a message sent to 1,000 subscribers
            counts 1,000 times).
        bytes: frame payload bytes.
        delay_counts: per bucket of `SEND_DELAY_BUCKETS_SECONDS` (and one more for
            longer delays), how many frames' oldest channel message waited that long
            between reaching the hub and being handed out to be sent.
        delay_sum_seconds: the sum of those delays.
    """

    __slots__ = ("bytes", "delay_counts", "delay_sum_seconds", "deliveries", "frames", "messages")

    def __init__(self) -> None:
        self.frames = 0
        self.messages = 0
        self.deliveries = 0
        self.bytes = 0
        self.delay_counts = [0] * (len(SEND_DELAY_BUCKETS_SECONDS) + 1)
        self.delay_sum_seconds = 0.0

    def waited(self, seconds: float) -> None:
        """Count one frame whose oldest channel message waited *seconds*."""
        self.delay_counts[bisect.bisect_left(SEND_DELAY_BUCKETS_SECONDS, seconds)] += 1
        self.delay_sum_seconds += seconds
