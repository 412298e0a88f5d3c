"""The protocol page's tables of error codes and close codes are the code's."""

from __future__ import annotations

import re

from service.closecodes import CloseCode
from tests.support.codes import error_classes
from tests.support.docs import DOCS, section

PROTOCOL = DOCS / "protocol.md"


def table_after(heading: str) -> list[list[str]]:
    """The body rows of the first table under *heading*, split into cells."""
    rows = re.search(r"^(\|.*\|\n)+", section(PROTOCOL, heading), re.MULTILINE)
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
