"""Structured logs: one line per event, readable or JSON, with the event's fields.

Code logs an event with its fields in ``extra=fields(...)``:
``logger.info("connection closed", extra=fields(conn=..., client=..., code=1000))``.
The human format appends them as ``key=value``; the JSON format writes one object per
line. Tokens, API keys and query strings are never among the fields.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

if TYPE_CHECKING:
    from service.settings import LogLevel

__all__ = (
    "HumanFormatter",
    "JSONFormatter",
    "configure_logging",
    "fields",
    "peer",
    "reconfigure_logging",
)

_encoder = msgspec.json.Encoder()
#: Loggers that only speak from WARNING on: the Redis client logs each retry.
_QUIET = ("coredis",)


def _not_a_cancellation(record: logging.LogRecord) -> bool:
    """False for a record about a cancelled task: coredis logs an error with a traceback
    when a server that stops cancels a connection it is still opening (coredis 6)."""
    if not record.exc_info:
        return True
    try:
        cancelled = anyio.get_cancelled_exc_class()
    except RuntimeError:  # logged outside an event loop: not a cancellation
        return True
    return not isinstance(record.exc_info[1], cancelled)


def peer(address: tuple[str, int] | None) -> str | None:
    """A client's address as log lines show it: ``host:port``."""
    return None if address is None else f"{address[0]}:{address[1]}"


def fields(**values: object) -> dict[str, Any]:
    """The ``extra`` of a log call that gives the event these fields (None ones left out)."""
    return {"fields": {key: value for key, value in values.items() if value is not None}}


def _fields_of(record: logging.LogRecord) -> dict[str, object]:
    found: dict[str, object] = getattr(record, "fields", {})
    return found


class HumanFormatter(logging.Formatter):
    """``2026-11-30 05:42:50,123 INFO clarion: connection opened conn=… client=…``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _fields_of(record)
        if not extra:
            return line
        return line + " " + " ".join(f"{key}={_human(value)}" for key, value in extra.items())


def _human(value: object) -> str:
    """*value* for a ``key=value`` pair: quoted (JSON) unless it is plain printable text,
    so that a value from a client (a user id) cannot forge a field or a line."""
    text = str(value)
    if text and text.isprintable() and not any(char in text for char in ' ="'):
        return text
    return _encoder.encode(text).decode()


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, then the
    event's fields (and ``error`` with the traceback, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields_of(record))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def configure_logging(level: LogLevel = "info", log_format: str = "human") -> None:
    """Send every log line at *level* and above to stderr in *log_format*.

    May be called again: the handler it installed before is replaced.
    """
    root = logging.getLogger()
    _remove_own_handler(root)
    handler = logging.StreamHandler(sys.stderr)
    handler.clarion = True  # type: ignore[attr-defined]  # marks the handler this module owns
    handler.setFormatter(JSONFormatter() if log_format == "json" else HumanFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET:
        quiet = logging.getLogger(name)
        quiet.setLevel(max(logging.WARNING, root.level))
        if _not_a_cancellation not in quiet.filters:
            quiet.addFilter(_not_a_cancellation)


def reconfigure_logging(level: LogLevel, log_format: str) -> None:
    """Apply a reloaded configuration's log settings, if `configure_logging` set up the
    logs (an app embedded in another program leaves its logging alone)."""
    if _remove_own_handler(logging.getLogger()):
        configure_logging(level, log_format)


def _remove_own_handler(root: logging.Logger) -> bool:
    own = [handler for handler in root.handlers if getattr(handler, "clarion", False)]
    for handler in own:
        root.removeHandler(handler)
    return bool(own)
