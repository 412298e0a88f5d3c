"""Test rules (after trio-websocket's test module):

- every async test runs on asyncio and on trio (the ``anyio_backend`` fixture below);
- sockets bind to 127.0.0.1 only, on a free port chosen by the test run;
- every test that waits on I/O has an absolute ``anyio.fail_after`` deadline, and
  pytest-timeout is the backstop;
- no ``sleep`` to synchronize: wait on an event or a message.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
