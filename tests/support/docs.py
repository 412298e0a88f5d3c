"""The docs as the tests read them: a page's text under a heading, its code blocks and
shell lines, and the documented address pointed at a test server.

The pages are the README and the MkDocs site's pages under ``docs/``; tests run what
they show, so that the docs cannot drift from the code.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Final

__all__ = (
    "DOCS",
    "DOCUMENTED_ADDRESS",
    "README",
    "code_block",
    "code_blocks",
    "on_port",
    "section",
    "shell_line",
)

ROOT: Final = Path(__file__).resolve().parents[2]
README: Final = ROOT / "README.md"
DOCS: Final = ROOT / "docs"
#: The address the docs' snippets connect to; the only text the tests change in them.
DOCUMENTED_ADDRESS: Final = "127.0.0.1:8000"
HEADING: Final = re.compile(r"(#{1,6}) ")
FENCED: Final = re.compile(r"^```(\S*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section(page: Path, heading: str) -> str:
    """The text of *page* under the line *heading* (``## From Python``), up to the next
    heading of the same level or above; headings inside code blocks do not count.

    Raises:
        AssertionError: if the page has no such heading.
    """
    level = len(heading) - len(heading.lstrip("#"))
    found: list[str] | None = None
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)) is not None:
            if found is not None and len(match[1]) <= level:
                break
            if line == heading:
                found = []
                continue
        if found is not None:
            found.append(line)
    if found is None:
        raise AssertionError(f"{page.name} has no {heading!r} heading")
    return "\n".join(found) + "\n"


def code_blocks(page: Path, heading: str) -> list[tuple[str, str]]:
    """The fenced code blocks under *heading* in *page*, in order, as (language, text)."""
    return [(match[1], match[2]) for match in FENCED.finditer(section(page, heading))]


def code_block(page: Path, heading: str, language: str) -> str:
    """The first ```` ```language ```` block under *heading* in *page*.

    Raises:
        AssertionError: if there is none.
    """
    for found, text in code_blocks(page, heading):
        if found == language:
            return text
    raise AssertionError(f"{page.name} has no ```{language} block under {heading!r}")


def on_port(snippet: str, port: int) -> str:
    """*snippet* with `DOCUMENTED_ADDRESS` pointed at 127.0.0.1:*port*, and nothing else
    changed."""
    assert DOCUMENTED_ADDRESS in snippet, f"no {DOCUMENTED_ADDRESS} in the snippet:\n{snippet}"
    return snippet.replace(DOCUMENTED_ADDRESS, f"127.0.0.1:{port}")


def shell_line(block: str, start: str) -> tuple[list[str], str]:
    """The line of the shell *block* that begins with *start*: its first command's argv
    (what comes before a ``|``) and its comment."""
    for line in block.splitlines():
        if line.startswith(start):
            command, _, comment = line.partition("  #")
            return shlex.split(command.partition(" | ")[0]), comment.strip()
    raise AssertionError(f"no line starting {start!r} in:\n{block}")
