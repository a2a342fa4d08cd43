"""Every benchmark states its protocol, and docs/evaluation.md's protocol table says the same."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from seganswer_cli.eval import BENCHMARKS
from seganswer_cli.eval.protocol import Protocol

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def protocol_rows() -> dict[str, list[str]]:
    """Benchmark name -> the cells of its row in the protocol table (rows may name several benchmarks)."""
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index("## Protocols"):].split("\n\n")[2]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]
        for name in re.findall(r"`([a-z0-9+-]+)`", cells[0]):
            rows[name] = cells
    return rows


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_protocol_is_stated_and_documented(name):
    protocol = BENCHMARKS[name].protocol
    assert isinstance(protocol, Protocol) and protocol.prompt and protocol.extraction and protocol.source
    row = protocol_rows().get(name)
    assert row is not None, f"docs/evaluation.md's protocol table has no row for {name}"
    assert row[4] == protocol.judge, f"{name}: the table says judge {row[4]!r}, the module {protocol.judge!r}"
    repository = protocol.source.split(":")[0]
    assert repository in row[5], f"{name}: the table should cite {repository}"
    assert BENCHMARKS[name].headline in row[3].split(";")[0], f"{name}: headline {BENCHMARKS[name].headline} first"
