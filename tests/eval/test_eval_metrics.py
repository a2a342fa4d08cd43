"""Every metric against values computed by hand, including the edge cases the benchmarks hinge on."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from seganswer_cli.eval.metrics import (
    HallusionRow,
    MaskIoU,
    accuracy,
    accuracy_summary,
    circular_accuracy,
    hallusion_metrics,
    hrbench_metrics,
    mask_counts,
    mmvp_metrics,
    pope_metrics,
)


def masks(*rows: str) -> np.ndarray:
    """``masks("1100", "0110")`` -> a (2, 4) bool array."""
    return np.array([[c == "1" for c in row] for row in rows], dtype=bool)


class TestMaskIoU:
    def test_ciou_pools_pixels_giou_averages_samples(self):
        acc = MaskIoU()
        # sample 1: I = 1, U = 3; sample 2: I = 2, U = 2
        assert acc.update(masks("1100"), masks("0110")) == pytest.approx(1 / 3)
        assert acc.update(masks("0011"), masks("0011")) == 1.0
        assert acc.ciou == pytest.approx(3 / 5)
        assert acc.giou == pytest.approx((1 / 3 + 1) / 2)
        assert acc.count == 2

    def test_empty_target_and_empty_prediction_scores_one(self):
        acc = MaskIoU()
        assert acc.update(masks("0000"), masks("0000")) == 1.0
        assert acc.ciou == 1.0 and acc.giou == 1.0

    def test_empty_target_with_a_prediction_scores_zero(self):
        acc = MaskIoU()
        assert acc.update(masks("0100"), masks("0000")) == 0.0
        assert acc.update(masks("0000"), masks("0110")) == 0.0
        assert acc.ciou == 0.0 and acc.giou == 0.0

    def test_empty_sample_adds_nothing_to_ciou_but_one_to_giou(self):
        acc = MaskIoU()
        acc.update(masks("1100"), masks("0110"))  # 1/3
        acc.update(masks("0000"), masks("0000"))  # 1
        assert acc.ciou == pytest.approx(1 / 3)
        assert acc.giou == pytest.approx(2 / 3)

    def test_ignore_pixels_count_for_neither(self):
        # without ignore: I = 1, U = 3; ignoring the third pixel (prediction-only) leaves I = 1, U = 2
        assert mask_counts(masks("1110"), masks("0100"), masks("0010")) == (1, 2)

    def test_no_samples_is_nan(self):
        assert math.isnan(MaskIoU().ciou) and math.isnan(MaskIoU().giou)

    def test_shape_mismatch_and_bad_counts_raise(self):
        with pytest.raises(ValueError, match="shape"):
            MaskIoU().update(masks("10"), masks("100"))
        with pytest.raises(ValueError, match="intersection"):
            MaskIoU().add_counts(3, 2)

    def test_matches_pycocotools_iou(self):
        rng = np.random.default_rng(0)
        for _ in range(5):
            pred, gt = rng.random((2, 16, 20)) > 0.6
            rles = [coco_mask.encode(np.asfortranarray(m.astype(np.uint8))) for m in (pred, gt)]
            reference = coco_mask.iou([rles[0]], [rles[1]], [0])[0, 0]
            assert MaskIoU().update(pred, gt) == pytest.approx(reference)


class TestAccuracy:
    def test_wilson_interval_hand_computed(self):
        # p = 0.8, n = 10, z = 1.96: centre 0.7167, half-width 0.2266
        result = accuracy([True] * 8 + [False] * 2)
        assert result.value == 0.8
        assert result.low == pytest.approx(0.4902, abs=1e-3)
        assert result.high == pytest.approx(0.9433, abs=1e-3)

    def test_interval_stays_in_unit_range_at_the_extremes(self):
        none = accuracy([False] * 5)
        assert none.low == 0.0 and none.high == pytest.approx(1.96**2 / (5 + 1.96**2), abs=1e-3)
        every = accuracy([True] * 5)
        assert every.high == 1.0 and every.low == pytest.approx(5 / (5 + 1.96**2), abs=1e-3)

    def test_empty_is_nan(self):
        assert math.isnan(accuracy([]).value) and accuracy([]).n == 0

    def test_summary_per_group(self):
        summary = accuracy_summary([True, False, True, True], ["a", "a", "b", "b"])
        assert summary["accuracy"] == 0.75 and summary["n"] == 4
        assert summary["accuracy/a"] == 0.5 and summary["accuracy/b"] == 1.0


class TestPope:
    def test_yes_is_the_positive_class(self):
        predictions = ["yes", "yes", "no", "no", "yes", None]
        labels = ["yes", "no", "no", "yes", "yes", "no"]
        # tp = 2 (0, 4), fp = 1 (1), fn = 1 (3), tn = 1 (2); 5 gave no answer: wrong, not a true negative
        metrics = pope_metrics(predictions, labels)
        assert metrics["accuracy"] == pytest.approx(3 / 6)
        assert metrics["unanswered"] == 1.0
        assert metrics["precision"] == pytest.approx(2 / 3)
        assert metrics["recall"] == pytest.approx(2 / 3)
        assert metrics["f1"] == pytest.approx(2 / 3)
        assert metrics["yes_ratio"] == pytest.approx(3 / 6)

    def test_yes_ratio_exposes_a_yes_biased_model(self):
        metrics = pope_metrics(["yes"] * 4, ["yes", "no", "no", "no"])
        assert metrics["yes_ratio"] == 1.0 and metrics["recall"] == 1.0
        assert metrics["precision"] == 0.25 and metrics["accuracy"] == 0.25

    def test_never_yes_has_zero_precision_not_an_error(self):
        metrics = pope_metrics(["no", "no"], ["yes", "no"])
        assert metrics["precision"] == 0.0 and metrics["f1"] == 0.0 and metrics["yes_ratio"] == 0.0

    def test_length_mismatch_raises(self):
        with pytest.raises(ValueError):
            pope_metrics(["yes"], ["yes", "no"])


def test_circular_eval_needs_every_rotation_right():
    rows = [(7, True), (7, True), (7, True), (9, True), (9, False), (9, True), (11, False)]
    assert circular_accuracy(rows) == pytest.approx(1 / 3)


def test_hallusion_question_and_figure_grouping():
    def row(category, sub, set_id, figure, question, correct):
        return HallusionRow(category, sub, str(set_id), str(figure), str(question), correct)

    rows = [
        row("VD", "illusion", 0, 0, 0, True),
        row("VD", "illusion", 0, 0, 1, True),
        row("VD", "illusion", 0, 1, 0, True),
        row("VD", "illusion", 0, 1, 1, False),
        row("VS", "chart", 1, 0, 0, False),  # asked without a figure: no figure group
        row("VS", "chart", 1, 1, 0, True),
    ]
    metrics = hallusion_metrics(rows)
    assert metrics["aAcc"] == pytest.approx(4 / 6)
    # question groups: VD-0-q0 (right on both figures), VD-0-q1 (wrong on figure 1), VS-1-q0 (wrong without figure)
    assert metrics["qAcc"] == pytest.approx(1 / 3)
    # figure groups: VD-0-f0 right, VD-0-f1 wrong, VS-1-f1 right; VS figure 0 left out
    assert metrics["fAcc"] == pytest.approx(2 / 3)


def test_hallusion_same_ids_in_other_subcategory_are_other_groups():
    rows = [HallusionRow("VD", "math", "0", "0", "0", True), HallusionRow("VD", "ocr", "0", "0", "0", False)]
    assert hallusion_metrics(rows)["qAcc"] == 0.5


def test_mmvp_pairs_are_consecutive_questions():
    rows = [(1, True), (2, True), (3, True), (4, False), (5, False), (6, False)]
    metrics = mmvp_metrics(rows)
    assert metrics["question_accuracy"] == 0.5
    assert metrics["pair_accuracy"] == pytest.approx(1 / 3)
    # order does not matter, pairing is by index
    assert mmvp_metrics(reversed(rows)) == metrics


def test_hrbench_averages_over_cycles():
    rows = [
        ("single", "0", True),
        ("single", "0", False),
        ("cross", "0", True),
        ("cross", "0", True),
        ("single", "1", True),
        ("single", "1", True),
        ("cross", "1", False),
        ("cross", "1", False),
    ]
    metrics = hrbench_metrics(rows)
    assert metrics["FSP"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["FCP"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["overall"] == pytest.approx((0.75 + 0.5) / 2)
