"""Fixtures of the data tests; the dataset builders live in ``builders.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import make_refer_root


@pytest.fixture
def refer_root(tmp_path: Path) -> Path:
    """LISA's refer_seg root with a tiny RefCOCO (unc)."""
    return make_refer_root(tmp_path / "refer_seg")
