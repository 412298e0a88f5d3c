"""The browser tests: a real headless Chromium against a real Clarion (see driver.py).

A missing Chromium or Playwright fails these tests with an install hint; they never skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from tests.browser.driver import missing_requirement

#: Where the tests leave files for people to look at (the dashboard's screenshot).
ARTIFACTS: Final = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(autouse=True)
def _browser_installed() -> None:
    missing = missing_requirement()
    if missing is not None:
        pytest.fail(missing)


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    """A fresh Chromium user data directory."""
    return tmp_path / "chromium-profile"


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
