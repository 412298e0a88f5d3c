"""Test rules (after trio-websocket's test module):

- every async test runs on asyncio and on trio (the ``anyio_backend`` fixture below);
- sockets bind to 127.0.0.1 only, on a free port chosen by the test run;
- every test that waits on I/O has an absolute ``anyio.fail_after`` deadline, and
  pytest-timeout is the backstop;
- no ``sleep`` to synchronize: wait on an event or a message.
"""

from __future__ import annotations

import gc
import uuid
import warnings
from typing import TYPE_CHECKING

import pytest

from channels.config import BrokerConfig
from tests.support.redis import INSTALL_HINT, RedisServer, find_redis_server

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The test run's own redis-server; a missing binary fails, it never skips."""
    binary = find_redis_server()
    if binary is None:
        pytest.fail(INSTALL_HINT)
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _collect_coredis_leftovers() -> None:
    # coredis 6.9 leaves some memory streams of its connections unclosed (one that broke,
    # one that never connected): collect them now, quietly, not in a later test.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unclosed <MemoryObject", ResourceWarning)
        gc.collect()


@pytest.fixture
def own_redis(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, not started: for tests that stop Redis."""
    server = RedisServer(redis_server.binary, tmp_path)
    try:
        yield server
    finally:
        server.stop()
        _collect_coredis_leftovers()


@pytest.fixture
def redis_broker(redis_server: RedisServer) -> Iterator[BrokerConfig]:
    """A Redis broker configuration with a key prefix of this test's own."""
    yield BrokerConfig(kind="redis", url=redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}")
    _collect_coredis_leftovers()


@pytest.fixture(params=["memory", "redis"])
def broker_config(request: pytest.FixtureRequest) -> BrokerConfig:
    """Each broker in turn: the memory broker, then Redis with a prefix of the test's own."""
    if request.param == "memory":
        return BrokerConfig()
    config: BrokerConfig = request.getfixturevalue("redis_broker")
    return config
