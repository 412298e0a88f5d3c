"""``clarion bench``: a load generator for throughput, latency and memory.

- `service.bench.wire`: the generator's minimal WebSocket client.
- `service.bench.poller`: which of the generator's sockets have something to read.
- `service.bench.load`: the subscribers on one loop, each timed when it reads.
- `service.bench.publishers`: a backend's ``POST /api/publish``, or a WebSocket
  publisher, on a fixed schedule, in a process of their own.
- `service.bench.scenarios`: ``rate``, ``max``, ``idle`` and ``doors``; `service.bench.hop`:
  ``hop``.
- `service.bench.server`: the server under test, pinned to its own core.
- `service.bench.report`: tables, JSON lines and the latency histogram.
"""

from __future__ import annotations

__all__ = ()
