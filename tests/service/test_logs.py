"""Log line formats and the handler Clarion installs."""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING

import anyio
import pytest

from service.logs import (
    HumanFormatter,
    JSONFormatter,
    configure_logging,
    fields,
    reconfigure_logging,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


def record(message: str, **values: object) -> logging.LogRecord:
    made = logging.LogRecord("clarion", logging.INFO, __file__, 1, message, (), None)
    made.__dict__.update(fields(**values))
    return made


def test_human_lines_end_with_the_fields_quoted_where_needed() -> None:
    line = HumanFormatter().format(record("closed", conn="ab12", user=None, reason="no pong"))
    assert line.endswith(' INFO clarion: closed conn=ab12 reason="no pong"')


def test_a_client_chosen_value_cannot_forge_a_field_or_a_line() -> None:
    line = HumanFormatter().format(record("opened", user="bob code=1000\nINFO forged"))
    assert line.endswith(' opened user="bob code=1000\\nINFO forged"')
    assert "\n" not in line


def test_json_lines_are_one_object_with_the_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("failed %s", code=200)
        failed.args = ("here",)
        failed.exc_info = sys.exc_info()
    entry = json.loads(JSONFormatter().format(failed))
    assert entry["time"].endswith("Z")
    assert (entry["level"], entry["logger"], entry["message"], entry["code"]) == (
        "info",
        "clarion",
        "failed here",
        200,
    )
    assert "ValueError: boom" in entry["error"]


@pytest.fixture
def root_handlers() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_handlers")
def test_a_reload_replaces_only_the_handler_clarion_installed() -> None:
    root = logging.getLogger()
    others = root.handlers[:]
    reconfigure_logging("debug", "json")  # not configured by Clarion: left alone
    assert root.handlers == others
    configure_logging("warning", "human")
    assert len(root.handlers) == len(others) + 1
    assert root.level == logging.WARNING
    reconfigure_logging("debug", "json")
    (own,) = [handler for handler in root.handlers if handler not in others]
    assert isinstance(own.formatter, JSONFormatter)
    assert root.level == logging.DEBUG
    assert logging.getLogger("coredis").level == logging.WARNING


@pytest.mark.usefixtures("root_handlers")
async def test_the_redis_client_logs_no_traceback_for_a_cancelled_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """coredis logs an error with the traceback of the cancellation when a stopping
    server cancels a connection it is opening; its real errors still show."""
    configure_logging("info", "human")
    coredis = logging.getLogger("coredis")
    cancelled = anyio.get_cancelled_exc_class()
    with caplog.at_level(logging.INFO):
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await anyio.sleep(1)
            except cancelled:
                coredis.exception("Connection attempt failed unexpectedly!")
                raise
        try:
            raise ConnectionResetError
        except ConnectionResetError:
            coredis.exception("lost the connection")
    assert [record.getMessage() for record in caplog.records] == ["lost the connection"]
