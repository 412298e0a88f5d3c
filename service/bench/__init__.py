"""``clarion bench``: a load generator for throughput, latency and memory.

- `service.bench.wire`: the generator's minimal WebSocket client.
- `service.bench.load`: subscribers and a publisher on one selector loop.
- `service.bench.scenarios`: ``rate``, ``max`` and ``idle``.
- `service.bench.server`: the server under test, pinned to its own core.
- `service.bench.report`: tables, JSON lines and the latency histogram.
"""

from __future__ import annotations

__all__ = ()
