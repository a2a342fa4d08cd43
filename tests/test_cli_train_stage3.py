"""``seganswer train-stage3`` on bad input: one clear line, non-zero exit, nothing written. Run
in-process through ``cli.main`` (the console entry point) to keep them fast."""

from __future__ import annotations

from test_cli_train import run_cli


def assert_one_line_error(code, err, expected):
    assert code not in (0, None), err
    assert err.strip().count("\n") == 0, err
    assert expected in err and "Traceback" not in err


def test_help_lists_the_dapo_options(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "300")  # rich would abbreviate long option names in a narrow terminal
    code, out, _ = run_cli(monkeypatch, capsys, "train-stage3", "--help")
    assert code == 0
    for flag in ("--rollouts", "--prompts-per-step", "--kl-coef", "--mini-batches", "--resume", "stage3-tiny"):
        assert flag in out


def test_no_data(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train-stage3", "-c", "stage3-tiny", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "no prompt data")
    assert not (tmp_path / "run").exists()


def test_missing_model_and_dataset(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train-stage3", "--model", tmp_path / "nope", "--data",
                           f"shapes={tmp_path}", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "model folder not found")
    code, _, err = run_cli(monkeypatch, capsys, "train-stage3", "--model", "tiny", "--data",
                           f"shapes={tmp_path / 'missing'}", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "dataset path not found")
    assert not (tmp_path / "run").exists()


def test_bad_values_and_resume_without_run(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train-stage3", "--rollouts", "1", "--data", f"s={tmp_path}",
                           "--out", tmp_path / "run")
    assert_one_line_error(code, err, "rollouts_per_prompt must be >= 2")
    code, _, err = run_cli(monkeypatch, capsys, "train-stage3", "--resume", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "cannot resume")


def test_prompts_without_answers(monkeypatch, capsys, tmp_path):
    from seganswer_cli.data import ShapesConfig, write_synthetic

    data = write_synthetic(tmp_path / "ref", "refseg", 4, ShapesConfig(width=64, height=64, min_size=16, max_size=32))
    code, _, err = run_cli(monkeypatch, capsys, "train-stage3", "--model", "tiny", "--data", f"shapes={data}",
                           "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(code, err, "no prompt with a verifiable answer")
    assert not (tmp_path / "run").exists()
