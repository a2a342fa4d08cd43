"""Helpers of the training tests (imported by the test modules, as tests/data does with builders.py)."""

from __future__ import annotations


def stage1_config(train_dir, val_dir=None, **overrides):
    """The tiny recipe on the test split, with ``overrides`` (dotted keys) on top."""
    from seganswer_cli.config import Stage1Config, load_config

    data = {"data": [f"shapes={train_dir}"], "val_data": str(val_dir) if val_dir else None, **overrides}
    return load_config(Stage1Config, "stage1-tiny", data)


def train_records(run_dir):
    """The deterministic fields of a run's training log (timings dropped)."""
    from seganswer_cli.train.runs import MetricsLog

    records = MetricsLog(run_dir / "metrics.jsonl").read()
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in records if r["kind"] == "train"]


def assert_resume_refused(train, config, run_dir, match: str, **state) -> None:
    """``train(config, run_dir, resume=True)`` stops with a ``UsageError`` matching ``match`` when the
    latest checkpoint's trainer state says ``state`` (a launch unlike the run's); the state is put back."""
    import json

    import pytest

    from seganswer_cli.errors import UsageError
    from seganswer_cli.train import runs

    state_file = runs.RunFolder(run_dir).latest_checkpoint() / runs.TRAINER_STATE
    saved = state_file.read_text()
    state_file.write_text(json.dumps({**json.loads(saved), **state}))
    try:
        with pytest.raises(UsageError, match=match):
            train(config, run_dir, resume=True, quiet=True)
    finally:
        state_file.write_text(saved)
