"""The scripts under ``recipes/`` (the shipped model's recipe, its experiment, the SAM-alone and reading probes)
parse, and the probe runs: they are documentation a user executes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("script", ["lib.sh", "shapes-demo.sh", "shapes-experiment.sh", "stage2-ablation.sh"])
def test_shell_recipes_parse(script):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    result = subprocess.run([bash, "-n", str(RECIPES / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("backbone, base", [(None, "shapes-base"), ("qwen2.5-vl", "shapes-base"),
                                            ("qwen3-vl", "shapes-base-qwen3-vl")])
def test_the_backbone_switch_picks_its_random_init_preset(backbone, base):
    """``BACKBONE`` (the shapes recipes' switch) names the preset they start from, and it is a preset of that backbone."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    from seganswer_cli.model.presets import get_preset

    env = {k: v for k, v in os.environ.items() if k != "BACKBONE"} | ({"BACKBONE": backbone} if backbone else {})
    result = subprocess.run([bash, "-c", f'source "{RECIPES / "lib.sh"}"; echo "$BASE"'], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 0 and result.stdout.strip() == base, result.stderr
    assert get_preset(base).backbone == (backbone or "qwen2.5-vl") and get_preset(base).mllm is None
    bad = subprocess.run([bash, "-c", f'source "{RECIPES / "lib.sh"}"; echo unreachable'], capture_output=True,
                         text=True, env={**env, "BACKBONE": "llava"})
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.strip() == \
        "BACKBONE=llava: expected qwen2.5-vl or qwen3-vl"


def test_lib_run_starts_then_skips_a_finished_run(tmp_path):
    """``lib.sh``'s ``run`` leaves the decision to ``--continue``: a new run starts, a finished one is left."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    from seganswer_cli.data import ShapesConfig, write_synthetic

    data = write_synthetic(tmp_path / "data", "refseg", 4, ShapesConfig(width=64, height=64, min_size=16, max_size=32))
    seganswer = tmp_path / "seganswer"
    seganswer.write_text(f"#!{bash}\nexec {sys.executable} -m seganswer_cli \"$@\"\n")
    seganswer.chmod(0o755)
    script = (f'source "{RECIPES / "lib.sh"}"; run s1 train-stage1 --data s="{data}" --max-steps 1; '
              f'run s1 train-stage1 --data s="{data}" --max-steps 1')
    result = subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OUT": str(tmp_path / "out"), "SEGANSWER": str(seganswer)})
    assert result.returncode == 0, result.stderr
    assert "starting a new run" in result.stderr and "finished already" in result.stderr
    assert (tmp_path / "out" / "s1" / "model" / "seganswer.json").is_file()


def test_sam_prompt_probe_runs_and_reports_what_the_docs_quote():
    result = subprocess.run(
        [sys.executable, str(RECIPES / "sam-prompt-probe.py"), "--steps", "2", "--val", "2", "--eval-every", "1",
         "--threads", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 <= row["val_iou"] <= 1.0 and 0.0 <= row["overlap_between_expressions"] <= 1.0
        assert row["small_targets"] >= 0


def test_reading_probe_runs_and_reports_accuracy_per_question_type():
    result = subprocess.run(
        [sys.executable, str(RECIPES / "reading-probe.py"), "--question", "both", "--steps", "2", "--batch", "2",
         "--val", "6", "--eval-every", "1", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert set(row) >= {"kind_accuracy", "colour_accuracy", "loss"}
        assert 0.0 <= row["kind_accuracy"] <= 1.0 and 0.0 <= row["colour_accuracy"] <= 1.0
    bad = subprocess.run([sys.executable, str(RECIPES / "reading-probe.py"), "--size-min", "300"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--size-min" in bad.stderr


def test_answer_scores_reads_every_look_of_the_annotated_region():
    result = subprocess.run([sys.executable, str(RECIPES / "answer-scores.py"), "tiny", "--n", "2", "--threads", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.splitlines()[-1])
    assert row["n"] == 2 and set(row) >= {"mask", "bbox", "direct"}
    for look in ("mask", "bbox", "direct"):
        assert 0.0 <= row[look]["all"] <= 1.0


def test_question_grounding_scores_the_masks_of_question_targets():
    result = subprocess.run([sys.executable, str(RECIPES / "question-grounding.py"), "tiny", "tiny", "--n", "3",
                             "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and rows[0] == rows[1]  # deterministic
    assert rows[0]["n"] == 3 and 0.0 <= rows[0]["iou"] <= rows[0]["coverage"] <= 1.0
    assert 0.0 <= rows[0]["click_iou"] <= 1.0


def _recipe_folder(root: Path, loss: float) -> Path:
    """A recipe folder in miniature: one data folder, one training run with its model, one merged model."""
    import torch
    from safetensors.torch import save_file

    (root / "data" / "vqa").mkdir(parents=True)
    (root / "data" / "vqa" / "records.jsonl").write_text('{"id": 1}\n')
    run = root / "3-stage2"
    (run / "model").mkdir(parents=True)
    rows = [{"kind": "train", "step": 1, "loss": 1.5, "samples_per_s": 3.0, "problems": {"empty_mask": 0}},
            {"kind": "train", "step": 2, "loss": loss, "pass1_s": 0.2, "problems": {"empty_mask": 1}}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for folder in (run / "model", root / "2-merged"):
        folder.mkdir(exist_ok=True)
        (folder / "seganswer.json").write_text(json.dumps({"run": str(root)}))
        save_file({"w": torch.full((2, 2), loss)}, str(folder / "projector.safetensors"))
    return root


def _compare(a: Path, b: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(RECIPES / "compare-runs.py"), str(a), str(b), *flags],
                          capture_output=True, text=True, timeout=120)


def test_compare_runs_finds_a_rerun_identical_timings_and_paths_aside(tmp_path):
    a = _recipe_folder(tmp_path / "a", 0.5)
    b = _recipe_folder(tmp_path / "b", 0.5)
    rows = b / "3-stage2" / "metrics.jsonl"
    rows.write_text(rows.read_text().replace('"samples_per_s": 3.0', '"samples_per_s": 9.0'))
    result = _compare(a, b)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "identical"
    assert "same  3-stage2: 2 of 2 records identical" in result.stdout
    assert "same  2-merged: 1 of 1 tensors identical" in result.stdout


def test_compare_runs_names_what_differs_and_by_how_much(tmp_path):
    a = _recipe_folder(tmp_path / "a", 0.5)
    b = _recipe_folder(tmp_path / "b", 0.75)
    (b / "data" / "vqa" / "records.jsonl").write_text('{"id": 2}\n')
    result = _compare(a, b)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "DIFF  data/vqa: 0 of 1 files identical; differ: records.jsonl" in lines
    assert "DIFF  3-stage2: 1 of 2 records identical; first difference at record 1; largest: loss 0.25" in lines
    assert "DIFF  3-stage2/model: 0 of 1 tensors identical; largest difference 0.25" in lines
    assert lines[-1] == "not identical"
    shutil.rmtree(b / "2-merged")
    rows = [json.loads(line) for line in _compare(a, b, "--json").stdout.splitlines()]
    assert {"step": "2-merged", "what": "weights", "same": False, "missing_in_b": str(b / "2-merged")} in rows


def test_compare_runs_bad_input_is_one_line(tmp_path):
    a = _recipe_folder(tmp_path / "a", 0.5)
    missing = _compare(a, tmp_path / "nowhere")
    assert missing.returncode == 2 and missing.stderr.strip() == f"compare-runs: {tmp_path / 'nowhere'} is not a folder"
    b = _recipe_folder(tmp_path / "b", 0.5)
    (b / "3-stage2" / "metrics.jsonl").write_text("{not json\n")
    broken = _compare(a, b)
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1
    assert broken.stderr.startswith("compare-runs: ")
