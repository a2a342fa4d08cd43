"""Shared Stage 1 fixtures: a small shapes-world split written once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def shapes_split(tmp_path_factory):
    """``(train_dir, val_dir)``: 64 training and 16 held-out referring samples, one or two shapes on
    a 96 px canvas (seganswer folder format, as ``seganswer data synth`` writes it)."""
    from seganswer_cli.data import ShapesConfig, write_synthetic

    root = tmp_path_factory.mktemp("shapes")
    config = ShapesConfig(width=96, height=96, min_size=32, max_size=64, min_objects=1, max_objects=2)
    write_synthetic(root / "train", "refseg", 64, config, seed=0)
    write_synthetic(root / "val", "refseg", 16, config, seed=1)
    return root / "train", root / "val"
