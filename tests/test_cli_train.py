"""``seganswer train-stage1`` / ``merge-lora`` on bad input: one clear line, non-zero exit, nothing
written over. Run in-process through ``cli.main`` (the console entry point) to keep them fast."""

from __future__ import annotations

import sys

import pytest

from seganswer_cli.cli import main


def run_cli(monkeypatch, capsys, *args):
    """``seganswer ARGS`` in this process: returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["seganswer", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def assert_one_line_error(code, err, expected):
    assert code not in (0, None), err
    assert err.strip().count("\n") == 0, err
    assert expected in err and "Traceback" not in err


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from seganswer_cli.data import ShapesConfig, write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("cli") / "shapes", "refseg", 8,
                           ShapesConfig(width=64, height=64, min_size=16, max_size=32), seed=0)


def test_missing_dataset_path(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train-stage1", "--data", f"shapes={tmp_path / 'nope'}",
                           "--out", tmp_path / "run")
    assert_one_line_error(code, err, "dataset path not found")
    assert not (tmp_path / "run").exists()


def test_unknown_preset(monkeypatch, capsys, tmp_path, shapes_dir):
    code, _, err = run_cli(monkeypatch, capsys, "train-stage1", "--model", "huge", "--data", f"s={shapes_dir}",
                           "--out", tmp_path / "run")
    assert_one_line_error(code, err, "not a preset")
    assert not (tmp_path / "run").exists()


def test_model_folder_without_seg_token(monkeypatch, capsys, tmp_path, shapes_dir):
    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.model.mllm import build_tiny_processor

    model = SegAnswerModel.from_preset("tiny")
    model.processor = build_tiny_processor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)  # no <|seg|>
    model.save_pretrained(tmp_path / "plain")
    capsys.readouterr()  # the save's own progress output is not the command's
    code, _, err = run_cli(monkeypatch, capsys, "train-stage1", "--model", tmp_path / "plain",
                           "--data", f"s={shapes_dir}", "--out", tmp_path / "run")
    assert_one_line_error(code, err, "has no <|seg|> token")
    assert not (tmp_path / "run").exists()


def test_resume_without_checkpoint(monkeypatch, capsys, tmp_path, shapes_dir):
    code, _, err = run_cli(monkeypatch, capsys, "train-stage1", "--data", f"s={shapes_dir}", "--resume",
                           "--out", tmp_path / "empty")
    assert_one_line_error(code, err, "not a run folder")
    run = tmp_path / "started"
    run.mkdir()
    (run / "settings.json").write_text('{"stage": "stage1"}')
    code, _, err = run_cli(monkeypatch, capsys, "train-stage1", "--data", f"s={shapes_dir}", "--resume", "--out", run)
    assert_one_line_error(code, err, "has no checkpoint yet")
    assert sorted(p.name for p in run.iterdir()) == ["settings.json"]
    code, _, err = run_cli(monkeypatch, capsys, "merge-lora", run, tmp_path / "merged")
    assert_one_line_error(code, err, "has no checkpoint")
    assert not (tmp_path / "merged").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(monkeypatch, capsys, tmp_path, shapes_dir):
    from seganswer_cli.model.seganswer import SegAnswerModel
    from seganswer_cli.train import runs

    original = SegAnswerModel.forward
    calls = {"n": 0}

    def forward_nan_at_third_step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SegAnswerModel, "forward", forward_nan_at_third_step)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "train-stage1", "--data", f"s={shapes_dir}", "--out", run_dir,
                           "--max-steps", 5, "--save-every", 2, "--quiet")
    assert_one_line_error(code, err, "loss is nan at step 3")
    assert "shapes:refseg:0:" in err and "step-00000002" in err
    run = runs.RunFolder(run_dir)
    assert [p.name for p in run.checkpoints()] == ["step-00000002"] and not run.is_finished
    assert [r["step"] for r in runs.MetricsLog(run.metrics_path).read()] == [1, 2]
    # the kept checkpoint is complete and loads
    assert runs.read_trainer_state(run.latest_checkpoint())["step"] == 2


def test_finished_run_is_not_written_over(monkeypatch, capsys, tmp_path, shapes_dir):
    run_dir = tmp_path / "run"
    args = ["train-stage1", "--data", f"s={shapes_dir}", "--out", run_dir, "--max-steps", 1, "--quiet"]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None), err
    before = (run_dir / "settings.json").read_text()
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, "holds a finished run; pass --overwrite")
    assert (run_dir / "settings.json").read_text() == before
    code, _, err = run_cli(monkeypatch, capsys, *args, "--resume")
    assert_one_line_error(code, err, "already finished")
    code, _, err = run_cli(monkeypatch, capsys, "merge-lora", run_dir, tmp_path / "merged")
    assert_one_line_error(code, err, "is a 'projector' run")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--overwrite", "--seed", 3)
    assert code in (0, None), err
    assert '"seed": 3' in (run_dir / "settings.json").read_text()


def test_sam_lr_flag(monkeypatch, capsys, tmp_path, shapes_dir):
    """``--sam-lr`` sets SAM 2.1's own rate: recorded in settings.json, logged per step as ``lr_sam``."""
    import json

    from seganswer_cli.train import runs

    run_dir = tmp_path / "run"
    args = ["pretrain-standin", "--model", "tiny", "--data", f"s={shapes_dir}", "--out", run_dir, "--max-steps", 1,
            "--quiet"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--sam-lr", 0)
    assert_one_line_error(code, err, "sam_lr")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--lr", 1e-3, "--sam-lr", 2.5e-4)
    assert code in (0, None), err
    assert json.loads((run_dir / "settings.json").read_text())["config"]["sam_lr"] == 2.5e-4
    (record,) = [r for r in runs.MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == "train"]
    assert record["lr_sam"] == pytest.approx(record["lr"] / 4)


def test_pretrain_standin_phase_flag(monkeypatch, capsys, tmp_path, shapes_dir):
    """``--phase points`` runs SAM 2.1's click pretraining (recorded); a Stage 1 phase is refused in one line."""
    import json

    args = ["pretrain-standin", "--model", "tiny", "--data", f"s={shapes_dir}", "--max-steps", 1, "--quiet"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "bad", "--phase", "lora")
    assert_one_line_error(code, err, "standin or points")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "points", "--phase", "points")
    assert code in (0, None), err
    assert json.loads((tmp_path / "points" / "settings.json").read_text())["config"]["phase"] == "points"
