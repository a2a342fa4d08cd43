"""The shipped ``shapes`` model (``src/seganswer_cli/assets/shapes``) is trained, not random: on
held-out shapes-world questions it answers in the trained format, above the 0.25 of chance and far
above its untrained architecture, and its masks overlap the referred shapes.

What it does not do yet (docs/shapes-experiment.md): its masks do not follow the question (one mask
per image, over several shapes), so its accuracy comes from colour questions and the second look
adds nothing over no second look. The floors below are its measured level with a margin, so that a
worse model fails; raise them with a better one.

The numbers of the full experiment (200 questions, mask vs bbox vs none) are in
docs/shapes-experiment.md; these tests rerun the mask column and the segmentation row.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from seganswer_cli.cli import app
from seganswer_cli.model.presets import packaged_folder

runner = CliRunner()
N = 200  # the whole generated sets: a few seconds each
#: measured for the shipped model (docs/shapes-experiment.md): accuracy 0.425 [0.359, 0.494], cIoU 0.121
ACCURACY_FLOOR = 0.33  # chance is 0.25
CIOU_FLOOR = 0.08


def evaluate(*args) -> dict:
    result = runner.invoke(app, ["eval", *map(str, args), "--limit", N, "--json", "-q"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_shipped_model_is_in_the_package():
    folder = packaged_folder("shapes")
    card = json.loads((folder / "seganswer.json").read_text())
    assert card["training"]["stage"] == "stage3"
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 25e6, f"the shipped model should stay small, it is {size / 1e6:.1f} MB"


@pytest.fixture(scope="module")
def vqa_untrained(tmp_path_factory):
    return evaluate("shapes-vqa", "--model", "shapes-base", "--out", tmp_path_factory.mktemp("untrained") / "run")


def test_shipped_model_answers_in_format_and_beats_its_untrained_architecture(tmp_path, vqa_untrained):
    trained = evaluate("shapes-vqa", "--out", tmp_path / "run")  # the default model: shapes
    accuracy, untrained = trained["metrics"]["accuracy"], vqa_untrained["metrics"]["accuracy"]
    print(f"\nshapes-vqa, {N} held-out questions: shapes {accuracy:.3f}, shapes-base {untrained:.3f}")
    # the untrained architecture never closes an <answer> tag; four candidate answers: chance is 0.25
    assert accuracy >= ACCURACY_FLOOR and accuracy >= untrained + 0.25
    assert trained["cost"]["second_look_rate"] > 0.9  # it segments before answering


def test_shipped_model_segments_held_out_expressions(tmp_path):
    summary = evaluate("shapes-refseg", "--out", tmp_path / "run")
    print(f"\nshapes-refseg, {N} held-out expressions: cIoU {summary['metrics']['ciou']:.3f}")
    assert summary["metrics"]["ciou"] >= CIOU_FLOOR
