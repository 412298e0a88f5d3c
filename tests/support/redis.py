"""The test run's own ``redis-server``: the bench's launcher, and how to get the binary.

The machine's own Redis (port 6379) is never used: the run starts its own server with
nothing saved to disk, and stops it by its PID.
"""

from __future__ import annotations

from service.bench.server import RedisServer, find_redis_server, free_port

__all__ = ("INSTALL_HINT", "RedisServer", "find_redis_server", "free_port")

INSTALL_HINT = (
    "the Redis tests need a redis-server binary (Redis 6.2 or newer): install it "
    "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) or set "
    "CLARION_REDIS_SERVER to its path"
)
