"""The docs' tables of error codes, close codes and configuration keys are the code's."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec
import pytest

from channels.config import BrokerConfig, ChannelRule, History
from service.closecodes import CloseCode
from service.settings import (
    AppSettings,
    AppWebhookSettings,
    AuthSettings,
    ServerSettings,
    WebhookSettings,
)
from tests.support.codes import error_classes
from tests.support.docs import DOCS, section

if TYPE_CHECKING:
    from pathlib import Path

PROTOCOL = DOCS / "protocol.md"
CONFIGURATION = DOCS / "configuration.md"


def table_after(heading: str, page: Path = PROTOCOL) -> list[list[str]]:
    """The body rows of the first table under *heading*, split into cells."""
    rows = re.search(r"^(\|.*\|\n)+", section(page, heading), re.MULTILINE)
    assert rows is not None, heading
    lines = rows.group(0).strip().splitlines()[2:]  # after the header and its rule
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_error_code_table_lists_every_error_with_its_http_status() -> None:
    documented = {int(row[0]): row[-1] for row in table_after("## Error codes")}
    expected = {
        cls.code: "-" if cls.http_status is None else str(cls.http_status)
        for cls in error_classes()
        if cls.code >= 100  # 10, a configuration error, is never sent to a client
    }
    assert documented == expected


def test_the_close_code_table_lists_every_close_code() -> None:
    documented = [int(row[0]) for row in table_after("## Close codes")]
    assert documented == sorted(CloseCode)


def keys(section: type[msgspec.Struct], prefix: str = "") -> list[str]:
    """The keys a section of the file takes, a nested section's as ``history.size``."""
    found = []
    for field in msgspec.structs.fields(section):
        if field.type is History:
            found += keys(History, f"{prefix}{field.name}.")
        else:
            found.append(prefix + field.name)
    return found


@pytest.mark.parametrize(
    ("heading", "section"),
    [
        ("## `server`", ServerSettings),
        ("## `broker`", BrokerConfig),
        ("## `auth`", AuthSettings),
        ("## `channels`", ChannelRule),
        ("## `webhooks`", WebhookSettings),
        ("## `apps`", AppSettings),
        ("### `apps[].webhooks`", AppWebhookSettings),
    ],
)
def test_the_configuration_tables_list_every_key(heading: str, section: type) -> None:
    documented = [row[0].strip("`") for row in table_after(heading, CONFIGURATION)]
    assert sorted(documented) == sorted(keys(section))
