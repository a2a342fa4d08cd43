"""``seganswer train-stage2`` on bad input: one clear line, non-zero exit, nothing written."""

from __future__ import annotations

import pytest

from test_cli_train import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def vqa_dir(tmp_path_factory):
    from seganswer_cli.data import ShapesConfig, write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("cli2") / "vqa", "vqa", 4,
                           ShapesConfig(width=64, height=64, min_size=16, max_size=32), seed=0)


@pytest.fixture(scope="module")
def fresh_model(tmp_path_factory):
    """A saved tiny model that never went through Stage 1."""
    from seganswer_cli.model import SegAnswerModel

    return SegAnswerModel.from_preset("tiny").save_pretrained(tmp_path_factory.mktemp("fresh") / "model")


def test_model_that_is_not_a_stage1_output(monkeypatch, capsys, tmp_path, vqa_dir, fresh_model):
    capsys.readouterr()
    code, _, err = run_cli(monkeypatch, capsys, "train-stage2", "--model", fresh_model, "--data", f"s={vqa_dir}",
                           "--out", tmp_path / "run")
    assert_one_line_error(code, err, "is not a Stage 1 output")
    assert "--allow-untrained-start" in err and not (tmp_path / "run").exists()


def test_allow_untrained_start_runs(monkeypatch, capsys, tmp_path, vqa_dir, fresh_model):
    code, _, err = run_cli(monkeypatch, capsys, "train-stage2", "-c", "stage2-tiny", "--model", fresh_model,
                           "--allow-untrained-start", "--data", f"s={vqa_dir}", "--out", tmp_path / "run",
                           "--max-steps", "1", "--batch-size", "2", "--quiet")
    assert code in (0, None), err
    assert (tmp_path / "run" / "model" / "seganswer.json").is_file()


@pytest.mark.parametrize(("args", "expected"), [
    ([], "no starting model"),
    (["--model", "nope/not/here"], "model folder not found"),
    (["--model", "tiny"], "is a preset"),
    (["--direct-share", "1.5"], "direct_share must be in [0, 1]"),
])
def test_bad_flags(monkeypatch, capsys, tmp_path, vqa_dir, args, expected):
    code, _, err = run_cli(monkeypatch, capsys, "train-stage2", "--data", f"s={vqa_dir}", "--out", tmp_path / "run", *args)
    assert_one_line_error(code, err, expected)
    assert not (tmp_path / "run").exists()


def test_missing_data(monkeypatch, capsys, tmp_path, fresh_model):
    code, _, err = run_cli(monkeypatch, capsys, "train-stage2", "--model", fresh_model, "--allow-untrained-start",
                           "--data", f"s={tmp_path / 'nope'}", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "dataset path not found")
    code, _, err = run_cli(monkeypatch, capsys, "train-stage2", "--model", fresh_model, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "no training data")
