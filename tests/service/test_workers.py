from __future__ import annotations

import multiprocessing
import os
import sys
from types import SimpleNamespace

import pytest

from channels.errors import ConfigError
from service.workers import claim_only_worker


def test_a_process_that_is_no_worker_claims_nothing() -> None:
    assert multiprocessing.parent_process() is None
    assert claim_only_worker() is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
def test_only_one_worker_of_a_parent_may_run_the_memory_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pose as a worker of a server whose master has our PID (unique on this machine).
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: SimpleNamespace(pid=os.getpid()))
    first = claim_only_worker()
    assert first is not None
    with pytest.raises(ConfigError, match="another worker of this server already runs one"):
        claim_only_worker()
    first.close()
    second = claim_only_worker()  # a worker that replaces a dead one may claim again
    assert second is not None
    second.close()
