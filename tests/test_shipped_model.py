"""The shipped ``shapes`` model (``src/seganswer_cli/assets/shapes``) is trained, not random: on
held-out shapes-world questions it answers in the trained format, above the 0.25 of chance and far
above its untrained architecture; its masks overlap the referred shapes and follow the expression
(two expressions on one image give two masks).

With its own masks, its pixel-level second look beats the box crop of the same mask and beats no
second look, at a fraction of the box's visual tokens (the paper's claim); given the region each
question is about, by far more. What it does less well than the previous model
(docs/shapes-experiment.md): referring-expression masks (cIoU 0.22, was 0.37; Stage 2's mask loss
on question targets costs it). The floors below are its measured level with a margin, so that a
worse model fails; raise them with a better one.

The numbers of the full experiment (200 questions, mask vs bbox vs none) are in
docs/shapes-experiment.md; these tests rerun its columns and the segmentation row.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from seganswer_cli.cli import app
from seganswer_cli.model.presets import packaged_folder

runner = CliRunner()
N = 200  # the whole generated sets: a few seconds each
#: measured for the shipped model (docs/shapes-experiment.md): accuracy 0.500 [0.431, 0.569], box crop
#: 0.380, no second look 0.405; annotated region as mask view 0.895 / as box crop 0.530; cIoU 0.217
#: two expressions per image on 39 held-out images: one mask for both in 7, mean IoU 0.245
ACCURACY_FLOOR = 0.44  # chance is 0.25
CIOU_FLOOR = 0.18
SAME_MASK_CEILING = 0.3  # the first two shipped models: 39 of 39
MEAN_IOU_FLOOR = 0.20


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
    # its card names the runs and paths relative to the run, never the training machine's folders
    assert [h["run"] for h in card["training_history"]][-1] == card["training"]["run"] == "4-stage3"

    def strings(value):
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    absolute = [s for s in strings(card) if s.startswith(("/", "~")) or "=/" in s or ":\\" in s]
    assert not absolute, absolute
    assert card["training_settings"]["config"]["model"] == "../3-stage2/model"


@pytest.fixture(scope="module")
def vqa_untrained(tmp_path_factory):
    return evaluate("shapes-vqa", "--model", "shapes-base", "--out", tmp_path_factory.mktemp("untrained") / "run")


@pytest.fixture(scope="module")
def shipped_vqa(tmp_path_factory):
    """``shipped_vqa(roi, masks)``: the default model's (shapes) shapes-vqa run with that second look,
    evaluated once for every test of this file that reads it."""
    done = {}

    def run(roi: str = "mask", masks: str = "model") -> dict:
        if (roi, masks) not in done:
            out = tmp_path_factory.mktemp(f"{roi}-{masks}") / "run"
            done[roi, masks] = evaluate("shapes-vqa", "--roi", roi, "--masks", masks, "--out", out)
        return done[roi, masks]

    return run


def test_shipped_model_answers_in_format_and_beats_its_untrained_architecture(shipped_vqa, vqa_untrained):
    trained = shipped_vqa()
    accuracy, untrained = trained["metrics"]["accuracy"], vqa_untrained["metrics"]["accuracy"]
    print(f"\nshapes-vqa, {N} held-out questions: shapes {accuracy:.3f}, shapes-base {untrained:.3f}")
    # the untrained architecture never closes an <answer> tag; four candidate answers: chance is 0.25
    assert accuracy >= ACCURACY_FLOOR and accuracy >= untrained + 0.25
    assert trained["cost"]["second_look_rate"] > 0.9  # it segments before answering


def test_shipped_model_segments_held_out_expressions(tmp_path):
    summary = evaluate("shapes-refseg", "--out", tmp_path / "run")
    print(f"\nshapes-refseg, {N} held-out expressions: cIoU {summary['metrics']['ciou']:.3f}")
    assert summary["metrics"]["ciou"] >= CIOU_FLOOR


def test_shipped_models_masks_follow_the_expression():
    """Two expressions naming different shapes of one held-out image give different masks (the
    first shipped models gave one mask per image whatever they were asked)."""
    from seganswer_cli.data.shapes_datasets import generate_samples
    from seganswer_cli.data.shapes_language import more_expressions
    from seganswer_cli.data.shapes_scenes import world
    from seganswer_cli.masks import mask_iou
    from seganswer_cli.model import SegAnswerModel

    model = SegAnswerModel.from_preset("shapes")
    same = total = 0
    ious = []
    for sample in generate_samples("refseg", 40, world("demo"), seed=100003):
        other = more_expressions(sample.extra["scene"], 1, seed=1, exclude=sample.extra["target_ids"])
        if not other:
            continue
        (a, _, _), (b, _, _) = model.segment_batch([sample.image.load()] * 2, [sample.expression, other[0][0]])
        same += mask_iou(a, b) > 0.9
        total += 1
        ious += [mask_iou(a, sample.mask.decode()), mask_iou(b, other[0][1])]
    mean_iou = sum(ious) / len(ious)
    print(f"\n{total} held-out images, two expressions each: one mask for both in {same}, mean IoU {mean_iou:.3f}")
    assert total >= 30 and same <= SAME_MASK_CEILING * total and mean_iou >= MEAN_IOU_FLOOR


def test_given_the_region_the_pixel_level_second_look_beats_the_box_and_no_second_look(shipped_vqa):
    """The paper's claim, grounding aside: the annotated region as the sparse mask view (fewer visual
    tokens) answers better than as a box crop, and better than answering directly from the first look."""
    mask, box, direct = shipped_vqa("mask", "gt"), shipped_vqa("bbox", "gt"), shipped_vqa("none")
    acc = {name: run["metrics"]["accuracy"] for name, run in [("mask", mask), ("bbox", box), ("none", direct)]}
    print(f"\nshapes-vqa, {N} held-out questions, annotated regions: {acc}")
    assert direct["cost"]["second_look_rate"] == 0 and direct["metrics"]["accuracy"] > 0.35  # answers in format
    assert acc["mask"] >= acc["bbox"] + 0.20 and acc["mask"] >= acc["none"] + 0.30
    assert mask["cost"]["mean_visual_tokens"] < 0.6 * box["cost"]["mean_visual_tokens"]


def test_with_its_own_masks_the_pixel_level_second_look_beats_the_box_and_no_second_look(shipped_vqa):
    """The paper's claim with the model's own masks: its sparse mask view answers better than the box
    crop of the same mask and than answering from the first look, at under a third of the box's
    visual tokens (measured 0.500 / 0.380 / 0.405; paired 42 vs 18 and 37 vs 18 questions)."""
    mask, box, direct = shipped_vqa("mask"), shipped_vqa("bbox"), shipped_vqa("none")
    acc = {name: run["metrics"]["accuracy"] for name, run in [("mask", mask), ("bbox", box), ("none", direct)]}
    print(f"\nshapes-vqa, {N} held-out questions, the model's own masks: {acc}")
    assert acc["mask"] >= acc["bbox"] + 0.07 and acc["mask"] >= acc["none"] + 0.05
    assert mask["cost"]["mean_visual_tokens"] < 0.33 * box["cost"]["mean_visual_tokens"]
