"""Scoring model outputs (or masks) on read items, and each benchmark's summary, end to end without a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from seganswer_cli.errors import MaskShapeError
from seganswer_cli.eval import get_benchmark
from seganswer_cli.eval.items import SampleResult


def run(name, folder, outputs, split=None):
    """Score ``outputs`` (id -> model text or mask) for the items of ``name``; return the summary."""
    spec = get_benchmark(name)
    results = [spec.score(outputs[item.id], item) for item in spec.read(folder, split).items]
    # what a resumed run does: results go through predictions.jsonl and back
    replayed = [SampleResult.from_json(json.loads(json.dumps(r.to_json()))) for r in results]
    assert replayed == results
    return spec.summarize(replayed), results


def test_vstar_accuracy_per_subset(vstar_dir):
    summary, results = run("vstar", vstar_dir, {"0": "<answer>B</answer>", "1": "<answer>B</answer>"})
    assert summary["accuracy"] == 0.5
    assert summary["accuracy/direct_attributes"] == 1.0 and summary["accuracy/relative_position"] == 0.0
    assert [r.rule for r in results] == ["tag:letter", "tag:letter"]


def test_mmbench_circular_vs_vanilla(mmbench_dir):
    # question 0 (answer B, then A, then C under shifts): right at shift 0 and 1, wrong at shift 2
    outputs = {"0": "B", "1000000": "A", "2000000": "A", "1": "A", "1000001": "B"}
    summary, _ = run("mmbench", mmbench_dir, outputs)
    assert summary["vanilla_accuracy"] == 1.0
    assert summary["circular_accuracy"] == 0.5
    assert summary["circular_accuracy/coarse_perception"] == 1.0


def test_hrbench_fsp_fcp(hrbench_dir):
    summary, _ = run("hrbench-4k", hrbench_dir, {"0": "A", "1": "B", "2": "D"})
    # cycle 0: single right, cross wrong; cycle 1: single right
    assert summary["FSP"] == 1.0 and summary["FCP"] == pytest.approx(0.0 / 2)
    assert summary["overall"] == pytest.approx((0.5 + 1.0) / 2)


def test_pope_official_rule_and_summary(pope_dir):
    outputs = {
        "random-1": "<answer>yes</answer>",
        "random-2": "There is a cat sitting on the sofa.",  # no No/no/not in the first sentence: yes
        "popular-1": "No, I do not see one.",
        "popular-2": "<answer>Yes, but it is not a real one</answer>",  # official: 'not' -> no (label yes)
        "adversarial-1": "No.",
        "adversarial-2": "<|seg|> To look closer",  # a reasoning turn never answered: wrong, not 'yes'
    }
    summary, results = run("pope", pope_dir, outputs)
    assert [r.extracted for r in results] == ["yes", "yes", "no", "no", "no", None]
    assert [r.rule for r in results] == ["tag:pope_official", "untagged:pope_official", "untagged:pope_official",
                                         "tag:pope_official", "untagged:pope_official", "none"]
    assert summary["random/accuracy"] == 1.0 and summary["popular/accuracy"] == 0.5
    assert summary["adversarial/yes_ratio"] == 0.0 and summary["adversarial/unanswered"] == 1.0
    assert summary["adversarial/accuracy"] == 0.5 and summary["unanswered"] == 1.0
    assert summary["accuracy"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)


@pytest.mark.parametrize(("answer", "official"), [
    # the official evaluate.py's reading of typical replies (first sentence, commas dropped, split on spaces)
    ("Yes", "yes"), ("No", "no"), ("no.", "no"), ("Yes, there is a dog.", "yes"),
    ("There is no dog in the image.", "no"), ("The dog is not visible", "no"),
    ("Yes. No other animals are there.", "yes"),  # only the first sentence counts
    ("NO", "yes"), ("Nope", "yes"),  # the official words are exactly No, no, not
])
def test_pope_official_rule_on_hand_cases(answer, official):
    from seganswer_cli.eval.pope import official_answer

    assert official_answer(answer) == official


def test_hallusionbench_summary(hallusion_dir):
    outputs = {
        "VD_illusion_0_0_0": "Yes.",
        "VD_illusion_0_0_1": "No.",
        "VD_illusion_0_1_0": "No.",
        "VD_illusion_0_1_1": "No.",  # wrong
        "VS_chart_1_1_0": "No, it is not.",
    }
    summary, _ = run("hallusionbench", hallusion_dir, outputs)
    assert summary["aAcc"] == pytest.approx(4 / 5)
    # question groups: VD q0 ok, VD q1 wrong (figure 1), VS q0 ok
    assert summary["qAcc"] == pytest.approx(2 / 3)
    # figure groups: VD f0 ok, VD f1 wrong, VS f1 ok
    assert summary["fAcc"] == pytest.approx(2 / 3)


def test_mmvp_pairs(mmvp_dir):
    summary, _ = run("mmvp", mmvp_dir, {"1": "(a)", "2": "B", "3": "B", "4": "B"})
    assert summary["question_accuracy"] == 0.75 and summary["pair_accuracy"] == 0.5


def test_visulogic_boxed(visulogic_dir):
    summary, results = run("visulogic", visulogic_dir, {"00000": "Answer: \\boxed{C}", "00001": "B"})
    assert summary["accuracy"] == 0.5 and summary["accuracy/Quantitative Reasoning"] == 1.0
    assert results[0].rule == "untagged:answer_prefix"


def test_refcoco_ciou_giou_from_masks(refer_seg_dir):
    spec = get_benchmark("refcoco")
    first, second = spec.read(refer_seg_dir).items
    gt = first.load_gt_mask()
    shifted = np.roll(gt, 1, axis=1)
    outputs = {first.id: gt, second.id: shifted}
    summary, results = run("refcoco", refer_seg_dir, outputs)
    inter, union = int((gt & shifted).sum()), int((gt | shifted).sum())
    assert results[1].intersection == inter and results[1].union == union
    assert summary["ciou"] == pytest.approx((gt.sum() + inter) / (gt.sum() + union))
    assert summary["giou"] == pytest.approx((1.0 + inter / union) / 2)
    assert summary["precision@0.5"] == (1.0 if inter / union >= 0.5 else 0.5)


def test_no_mask_counts_as_empty_and_wrong_shape_raises(refer_seg_dir):
    spec = get_benchmark("refcoco")
    item = spec.read(refer_seg_dir).items[0]
    result = spec.score(None, item)
    assert (
        result.intersection == 0 and result.union == int(item.load_gt_mask().sum()) and result.rule == "none"
    )
    assert spec.summarize([result])["no_mask"] == 1.0
    with pytest.raises(MaskShapeError):
        spec.score(np.zeros((3, 3), bool), item)


def test_reasonseg_ignore_region_is_not_counted(reasonseg_dir):
    spec = get_benchmark("reasonseg")
    item = spec.read(reasonseg_dir).items[0]
    # predicting target and ignore region together is still a perfect mask
    prediction = item.load_gt_mask() | item.load_ignore_mask()
    result = spec.score(prediction, item)
    assert result.intersection == result.union == int(item.load_gt_mask().sum())


@pytest.mark.parametrize(("output", "letter", "rule"), [
    # what the official prompt asks for, with and without the reasoning loop's answer tags
    ("The count rises by one each step. Answer: \\boxed{C}", "C", "untagged:answer_prefix"),
    ("<answer>\\boxed{C}</answer>", "C", "tag:answer_prefix"),
    ("<answer>Answer: \\boxed{C}.</answer>", "C", "tag:answer_prefix"),
    ("<answer>C</answer>", "C", "tag:letter"),
    ("<answer>Answer: \\boxed{$LETTER}.</answer>", None, "none"),  # the template echoed: no answer
])
def test_visulogic_reads_the_official_answer_format(visulogic_dir, output, letter, rule):
    item = get_benchmark("visulogic").read(visulogic_dir).items[0]
    result = get_benchmark("visulogic").score(output, item)
    assert (result.extracted, result.rule, result.correct) == (letter, rule, letter == "C")


#: A trajectory as the reasoning loop writes it: a first turn that mentions other answers and asks for
#: the region, then the answer turn. Only the last turn answers.
TWO_TURNS = ("To tell whether it is (A) or no, it should first observe <|seg|>.<|im_end|>\n"
             "<answer>{}</answer>.<|im_end|>")


@pytest.mark.parametrize(("name", "fixture", "answers"), [
    ("vstar", "vstar_dir", {"0": "B", "1": "A"}),
    ("hrbench-4k", "hrbench_dir", {"0": "A", "1": "C", "2": "D"}),
    ("mmbench", "mmbench_dir", None),  # every rotation's own right letter
    ("visulogic", "visulogic_dir", {"00000": "\\boxed{C}", "00001": "A"}),
    ("mmvp", "mmvp_dir", {"1": "(a)", "2": "(b) Closed", "3": "B", "4": "A"}),
    ("pope", "pope_dir", None),  # the label, as a sentence
    ("hallusionbench", "hallusion_dir", None),
])
def test_two_turn_outputs_are_scored_by_their_last_turn(name, fixture, answers, request):
    """Every question benchmark reads the answer turn, not the reasoning turn before it (which names
    '(A)' and 'no'), and scores a right answer right; the same output without its answer turn is none."""
    spec = get_benchmark(name)
    items = spec.read(request.getfixturevalue(fixture)).items
    for item in items:
        if answers is not None:
            answer = answers[item.id]
        elif item.answer_kind == "yesno":
            answer = "Yes, there is." if item.answer == "yes" else "There is not."
        else:
            answer = item.answer
        result = spec.score(TWO_TURNS.format(answer), item)
        assert result.correct, (name, item.id, answer, result)
        assert result.rule.startswith("tag:"), result.rule
        unanswered = spec.score(TWO_TURNS.split("\n")[0], item)
        assert unanswered.extracted is None and not unanswered.correct
