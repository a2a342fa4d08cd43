"""The scripts under ``recipes/`` (the shipped model's recipe, its experiment, the SAM-alone and reading probes)
parse, and the probe runs: they are documentation a user executes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("script", ["shapes-demo.sh", "shapes-experiment.sh"])
def test_shell_recipes_parse(script):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    result = subprocess.run([bash, "-n", str(RECIPES / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


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
