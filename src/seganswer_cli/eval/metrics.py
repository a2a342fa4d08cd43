"""Benchmark metrics on plain Python/numpy values, each as its benchmark's authors define it.

- Mask IoU (referring segmentation, LISA's protocol): cIoU = Σ intersection / Σ union over the split;
  gIoU = mean per-sample IoU, where an empty target with an empty prediction scores 1.
- Accuracy with a Wilson score interval (no resampling, so summaries are deterministic).
- POPE: accuracy, precision, recall, F1 and yes-ratio, with ``yes`` the positive class (POPE's
  official evaluation).
- MMBench CircularEval: a question counts only if every circular rotation of its options is right.
- HallusionBench: aAcc over all questions; qAcc over question groups (category, subcategory, set_id,
  question_id: one question asked about every figure of the set); fAcc over figure groups (category,
  subcategory, set_id, figure_id: every question about one figure), leaving out VS questions with
  figure_id 0, which are asked without a figure (as the official ``get_eval_fig`` does).
- MMVP: per-question accuracy and pair accuracy (questions 2k-1 and 2k, 1-based, both right).
- HR-Bench: accuracy per task (FSP = ``single``, FCP = ``cross``) and overall within each option
  cycle (``cycle_category``), then averaged over cycles (the benchmark's own ``evaluate``).

No torch here: metrics run wherever the JSONL of predictions is.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np


class MaskIoU:
    """Accumulates (prediction, target) mask pairs; reads out cIoU and gIoU.

    >>> acc = MaskIoU()
    >>> acc.update(np.array([[1, 1, 0, 0]], bool), np.array([[0, 1, 1, 0]], bool))
    0.3333333333333333
    >>> acc.update(np.zeros((1, 4), bool), np.zeros((1, 4), bool))  # both empty: a perfect answer
    1.0
    >>> round(acc.ciou, 4), round(acc.giou, 4)
    (0.3333, 0.6667)
    """

    def __init__(self) -> None:
        self.intersection = 0
        self.union = 0
        self.per_sample: list[float] = []

    def update(self, pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> float:
        """Add one pair of (H, W) bool masks; pixels set in ``ignore`` count for neither. Returns its IoU."""
        intersection, union = mask_counts(pred, target, ignore)
        return self.add_counts(intersection, union)

    def add_counts(self, intersection: int, union: int) -> float:
        """Add one sample already reduced to pixel counts (how a resumed run replays predictions.jsonl)."""
        if intersection < 0 or union < intersection:
            raise ValueError(f"need 0 <= intersection <= union, got {intersection}, {union}")
        self.intersection += int(intersection)
        self.union += int(union)
        iou = 1.0 if union == 0 else intersection / union
        self.per_sample.append(iou)
        return iou

    @property
    def count(self) -> int:
        return len(self.per_sample)

    @property
    def ciou(self) -> float:
        """Σ intersection / Σ union; 1.0 when every target and prediction was empty, NaN with no samples."""
        if not self.per_sample:
            return math.nan
        return 1.0 if self.union == 0 else self.intersection / self.union

    @property
    def giou(self) -> float:
        """Mean per-sample IoU; NaN with no samples."""
        return float(np.mean(self.per_sample)) if self.per_sample else math.nan


def mask_counts(pred: np.ndarray, target: np.ndarray, ignore: np.ndarray | None = None) -> tuple[int, int]:
    """(|pred ∩ target|, |pred ∪ target|) in pixels of two (H, W) bool masks, ignoring ``ignore``."""
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"prediction mask {pred.shape} and target mask {target.shape} differ in shape")
    if ignore is None:  # |A ∪ B| = |A| + |B| - |A ∩ B|: one elementwise pass instead of two
        intersection = int(np.count_nonzero(pred & target))
        return intersection, int(np.count_nonzero(pred)) + int(np.count_nonzero(target)) - intersection
    keep = ~np.asarray(ignore, dtype=bool)
    if keep.shape != target.shape:
        raise ValueError(f"ignore mask {keep.shape} and target mask {target.shape} differ in shape")
    intersection = int(np.count_nonzero(pred & target & keep))
    union = int(np.count_nonzero((pred | target) & keep))
    return intersection, union


@dataclass(frozen=True)
class Accuracy:
    """An accuracy with its Wilson score interval (``low``, ``high``) at ``confidence``."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = 0.95


def accuracy(correct: Sequence[bool], confidence: float = 0.95) -> Accuracy:
    """Mean of ``correct`` with a Wilson score interval, which stays inside [0, 1] even at 0% or 100%.

    >>> a = accuracy([True] * 8 + [False] * 2)
    >>> a.value, round(a.low, 3), round(a.high, 3)
    (0.8, 0.49, 0.943)
    """
    n = len(correct)
    if n == 0:
        return Accuracy(math.nan, math.nan, math.nan, 0, confidence)
    p = sum(bool(c) for c in correct) / n
    z = _normal_quantile(0.5 + confidence / 2)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # at p = 0 or 1 the bound is exactly 0 or 1; say so instead of leaving float noise
    low = 0.0 if p == 0 else max(0.0, centre - half)
    high = 1.0 if p == 1 else min(1.0, centre + half)
    return Accuracy(p, low, high, n, confidence)


@dataclass(frozen=True)
class PairedComparison:
    """Two runs scored on the same questions: how often only one of them is right, and the exact
    two-sided McNemar p-value of that split (the sign test on the discordant questions)."""

    only_a: int
    """Questions ``a`` answers right and ``b`` wrong."""
    only_b: int
    shared: int
    """Questions both runs answered."""
    p_value: float


def paired_comparison(a: dict[Hashable, bool], b: dict[Hashable, bool]) -> PairedComparison:
    """Compare two runs' correctness (question id -> right) on the ids they share.

    >>> c = paired_comparison({1: True, 2: True, 3: False}, {1: False, 2: True, 3: False, 4: True})
    >>> c.only_a, c.only_b, c.shared, c.p_value
    (1, 0, 3, 1.0)
    >>> round(paired_comparison({i: i < 23 for i in range(24)}, {i: i == 23 for i in range(24)}).p_value, 8)
    2.98e-06
    """
    shared = [k for k in a if k in b]
    only_a = sum(bool(a[k]) and not b[k] for k in shared)
    only_b = sum(bool(b[k]) and not a[k] for k in shared)
    n, k = only_a + only_b, min(only_a, only_b)
    p_value = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return PairedComparison(only_a, only_b, len(shared), p_value)


def _normal_quantile(q: float) -> float:
    """Inverse standard normal CDF by bisection on ``erf`` (avoids a scipy dependency)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def grouped_accuracy(rows: Iterable[tuple[Hashable, bool]]) -> dict[Hashable, float]:
    """Accuracy per group key, e.g. V*'s ``direct_attributes`` and ``relative_position`` subsets."""
    hits: dict[Hashable, list[bool]] = defaultdict(list)
    for key, correct in rows:
        hits[key].append(bool(correct))
    return {key: sum(v) / len(v) for key, v in hits.items()}


def all_correct_rate(rows: Iterable[tuple[Hashable, bool]]) -> float:
    """Fraction of groups in which every member is correct (the core of CircularEval, qAcc, fAcc, MMVP pairs)."""
    groups: dict[Hashable, bool] = {}
    for key, correct in rows:
        groups[key] = groups.get(key, True) and bool(correct)
    return sum(groups.values()) / len(groups) if groups else math.nan


def pope_metrics(predictions: Sequence[str | None], labels: Sequence[str]) -> dict[str, float]:
    """POPE's metrics, ``yes`` positive (the official ``evaluate.py``), plus ``unanswered``.

    ``yes_ratio`` is the share of ``yes`` predictions (POPE reports it to expose yes-bias). A prediction
    that is neither yes nor no (the model gave no answer) is wrong: a missed positive when the label is
    yes, and not a true negative when it is no. Precision is 0 when nothing was predicted ``yes``.

    >>> m = pope_metrics(["yes", "no", None], ["yes", "no", "no"])
    >>> m["accuracy"], m["precision"], m["unanswered"]
    (0.6666666666666666, 1.0, 1.0)
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    pred_yes = np.array([p == "yes" for p in predictions], dtype=bool)
    pred_no = np.array([p == "no" for p in predictions], dtype=bool)
    label_yes = np.array([str(x).strip().lower() == "yes" for x in labels], dtype=bool)
    tp = int(np.count_nonzero(pred_yes & label_yes))
    fp = int(np.count_nonzero(pred_yes & ~label_yes))
    fn = int(np.count_nonzero(~pred_yes & label_yes))
    tn = int(np.count_nonzero(pred_no & ~label_yes))
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else math.nan,
        "unanswered": float(n - int(np.count_nonzero(pred_yes | pred_no))),
    }


def circular_accuracy(rows: Iterable[tuple[Hashable, bool]]) -> float:
    """MMBench CircularEval: rows are (original question index, correct) for every rotation."""
    return all_correct_rate(rows)


@dataclass(frozen=True)
class HallusionRow:
    """One HallusionBench answer with the official grouping keys."""

    category: str
    subcategory: str
    set_id: str
    figure_id: str
    question_id: str
    correct: bool


def hallusion_metrics(rows: Sequence[HallusionRow]) -> dict[str, float]:
    """aAcc, qAcc and fAcc as defined above (official ``get_eval_all``/``get_eval_pair_all``/``get_eval_fig``)."""
    a_acc = sum(r.correct for r in rows) / len(rows) if rows else math.nan
    q_acc = all_correct_rate(((r.category, r.subcategory, r.set_id, r.question_id), r.correct) for r in rows)
    f_acc = all_correct_rate(
        ((r.category, r.subcategory, r.set_id, r.figure_id), r.correct)
        for r in rows
        if not (r.category == "VS" and str(r.figure_id) == "0")
    )
    return {"aAcc": a_acc, "qAcc": q_acc, "fAcc": f_acc}


def mmvp_metrics(rows: Iterable[tuple[int, bool]]) -> dict[str, float]:
    """Rows are (1-based question Index, correct). Pair k holds questions 2k+1 and 2k+2."""
    rows = list(rows)
    question = sum(c for _, c in rows) / len(rows) if rows else math.nan
    pair = all_correct_rate(((index - 1) // 2, correct) for index, correct in rows)
    return {"question_accuracy": question, "pair_accuracy": pair}


#: HR-Bench's ``category`` values and the names its paper reports them under.
HRBENCH_TASKS = {"single": "FSP", "cross": "FCP"}


def hrbench_metrics(rows: Iterable[tuple[str, str, bool]]) -> dict[str, float]:
    """Rows are (category, cycle_category, correct); returns FSP, FCP and overall averaged over cycles."""
    by_cycle: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for category, cycle, correct in rows:
        by_cycle[str(cycle)].append((str(category), bool(correct)))
    if not by_cycle:
        return {"FSP": math.nan, "FCP": math.nan, "overall": math.nan}
    sums: dict[str, float] = defaultdict(float)
    for answers in by_cycle.values():
        sums["overall"] += sum(c for _, c in answers) / len(answers)
        for category, value in grouped_accuracy(answers).items():
            sums[HRBENCH_TASKS.get(category, category)] += value
    return {name: total / len(by_cycle) for name, total in sums.items()}


def accuracy_summary(
    correct: Sequence[bool], groups: Sequence[str] | None = None, prefix: str = ""
) -> dict[str, float]:
    """``accuracy``, its 95% Wilson bounds and ``n``; plus ``accuracy/<group>`` per group when given.

    >>> accuracy_summary([True, False, True, True], groups=["a", "a", "b", "b"])["accuracy/a"]
    0.5
    """
    overall = accuracy(correct)
    summary = {
        f"{prefix}accuracy": overall.value,
        f"{prefix}accuracy_ci_low": overall.low,
        f"{prefix}accuracy_ci_high": overall.high,
        f"{prefix}n": float(overall.n),
    }
    if groups is not None:
        for key, value in sorted(grouped_accuracy(zip(groups, correct, strict=True)).items()):
            summary[f"{prefix}accuracy/{key}"] = value
    return summary
