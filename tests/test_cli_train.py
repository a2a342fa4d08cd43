"""``seganswer train-stage1`` / ``merge-lora`` on bad input: one clear line, non-zero exit, nothing
written over. Run in-process through ``cli.main`` (the console entry point) to keep them fast."""

from __future__ import annotations

import pytest

from cli_helpers import run_cli


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
    """``--phase points`` runs SAM 2.1's click pretraining (recorded); a Stage 1 phase is refused with the
    usage line (the choices are standin and points)."""
    import json

    args = ["pretrain-standin", "--model", "tiny", "--data", f"s={shapes_dir}", "--max-steps", 1, "--quiet"]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "bad", "--phase", "lora")
    assert code == 2 and "Invalid value for '--phase'" in err and "'standin', 'points'" in err
    code, _, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "points", "--phase", "points")
    assert code in (0, None), err
    assert json.loads((tmp_path / "points" / "settings.json").read_text())["config"]["phase"] == "points"


def test_set_reaches_any_setting_through_the_same_checks(monkeypatch, capsys, tmp_path, shapes_dir):
    import json

    base = ["train-stage1", "--data", f"s={shapes_dir}", "--max-steps", 1, "--quiet"]
    run_dir = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, *base, "--out", run_dir, "--set", "optim.weight_decay=0.25",
                           "--set", "lora.rank=4", "--set", "standin_look_modes=[mask, bbox]")
    assert code in (0, None), err
    config = json.loads((run_dir / "settings.json").read_text())["config"]
    assert config["optim"]["weight_decay"] == 0.25 and config["lora"]["rank"] == 4
    assert config["standin_look_modes"] == ["mask", "bbox"]
    for assignment, expected in [("nope=1", "nope"), ("optim.nope=1", "optim.nope"), ("max_steps=abc", "max_steps"),
                                 ("lora.rank=1.5", "lora.rank"), ("optim.lr", "KEY=VALUE"),
                                 ("gradient_checkpointing=maybe", "gradient_checkpointing")]:
        code, _, err = run_cli(monkeypatch, capsys, *base, "--out", tmp_path / "bad", "--set", assignment)
        assert_one_line_error(code, err, expected)
        assert not (tmp_path / "bad").exists()
    code, _, err = run_cli(monkeypatch, capsys, *base, "--out", tmp_path / "bad", "--set", "max_steps=3")
    assert_one_line_error(code, err, "max_steps given both by a flag and by --set")


def test_continue_lets_the_run_folder_decide(monkeypatch, capsys, tmp_path, shapes_dir):
    import shutil

    from seganswer_cli.train import runs

    run_dir = tmp_path / "run"
    args = ["train-stage1", "--data", f"s={shapes_dir}", "--max-steps", 2, "--save-every", 1, "--quiet",
            "--out", run_dir, "--continue"]
    # an empty folder: start (here killed after step 1, its checkpoint kept)
    run_dir.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, *args, "--stop-after-step", 1)
    assert code in (0, None), err
    assert "starting a new run" in err
    run = runs.RunFolder(run_dir)
    assert [p.name for p in run.checkpoints()] == ["step-00000001"] and not run.is_finished

    # a damaged latest checkpoint: one line, nothing touched
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    (damaged / "checkpoints" / "step-00000001" / "optimizer.pt").unlink()
    listing = sorted(str(p.relative_to(damaged)) for p in damaged.rglob("*"))
    for flag in ("--continue", "--resume"):
        code, _, err = run_cli(monkeypatch, capsys, *[a if a != run_dir else damaged for a in args[:-1]], flag)
        assert_one_line_error(code, err, "damaged (it lacks optimizer.pt)")
        assert sorted(str(p.relative_to(damaged)) for p in damaged.rglob("*")) == listing
    (damaged / "checkpoints" / "step-00000001" / "trainer_state.json").write_text("{cut")
    (damaged / "checkpoints" / "step-00000001" / "optimizer.pt").write_bytes(b"")
    stamp = {p: p.stat().st_mtime_ns for p in damaged.rglob("*")}
    code, _, err = run_cli(monkeypatch, capsys, *[a if a != run_dir else damaged for a in args])
    assert_one_line_error(code, err, "trainer_state.json cannot be read")
    assert {p: p.stat().st_mtime_ns for p in damaged.rglob("*")} == stamp

    # a checkpoint: resume
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None), err
    assert "resuming from step-00000001" in err and run.is_finished
    assert [r["step"] for r in runs.MetricsLog(run.metrics_path).read() if r["kind"] == "train"] == [1, 2]

    # finished: say so, exit 0, nothing rewritten
    stamp = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None) and "finished already" in err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == stamp

    # another stage's or phase's folder: one line, nothing touched
    for other, expected in [(["train-stage3", "--data", f"s={shapes_dir}"], "not stage3"),
                            (["train-stage1", "--phase", "lora", "--data", f"s={shapes_dir}"], "not stage1 (phase lora)"),
                            (["pretrain-standin", "--data", f"s={shapes_dir}"], "not standin (phase standin)")]:
        code, _, err = run_cli(monkeypatch, capsys, *other, "--out", run_dir, "--continue", "--quiet")
        assert_one_line_error(code, err, expected)
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == stamp
    code, _, err = run_cli(monkeypatch, capsys, *args, "--overwrite")
    assert_one_line_error(code, err, "--continue decides by itself")

    # started but killed before its first checkpoint: start it again
    unstarted = tmp_path / "unstarted"
    unstarted.mkdir()
    shutil.copy(run_dir / "settings.json", unstarted / "settings.json")
    (unstarted / "metrics.jsonl").write_text('{"kind": "eval", "step": 0}\n')
    code, _, err = run_cli(monkeypatch, capsys, *[a if a != run_dir else unstarted for a in args])
    assert code in (0, None), err
    assert "no checkpoint was written; starting it again" in err and runs.RunFolder(unstarted).is_finished
    # a folder holding something else
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = run_cli(monkeypatch, capsys, *[a if a != run_dir else tmp_path / "other" for a in args])
    assert_one_line_error(code, err, "is not a run folder")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
