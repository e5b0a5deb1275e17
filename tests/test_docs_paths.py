"""The commands in docs/*.md run on a fresh clone: no code block names the team's ../shared/data (prose and
tables may say that ``$RADCOT_TEST_DATA`` defaults to it)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fast
_FENCE = re.compile(r"^(```|~~~)")


def _code_lines(text: str):
    """``(line number, line)`` of every line inside a fenced code block."""
    inside = False
    for n, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.strip()):
            inside = not inside
        elif inside:
            yield n, line


@pytest.mark.parametrize("page", sorted(p.name for p in (REPO / "docs").glob("*.md")))
def test_doc_commands_use_no_developer_only_paths(page):
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    hits = [f"docs/{page}:{n}: {line.strip()}" for n, line in _code_lines(text) if "../shared" in line]
    assert not hits, "commands naming paths only the developers have (use data/demo or files the example makes):\n" \
        + "\n".join(hits)


def test_data_md_says_where_its_commands_run():
    intro = (REPO / "docs" / "data.md").read_text(encoding="utf-8").split("## ", 1)[0]
    assert "../shared" not in intro and "data/demo" in intro
