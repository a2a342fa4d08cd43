"""Scoring a predicted mask against an item's ground truth, shared by RefCOCO(+/g) and ReasonSeg.

Each sample is reduced to pixel counts (intersection, union) so predictions.jsonl can rebuild the
split's cIoU and gIoU exactly (see ``metrics.MaskIoU``). ``correct`` means IoU >= 0.5 (the usual
Prec@0.5), reported as ``precision@0.5``. A prediction of ``None`` (the model never emitted
``<|seg|>``) scores as an empty mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seganswer_cli.errors import MaskShapeError
from seganswer_cli.eval.items import EvalItem, SampleResult
from seganswer_cli.eval.metrics import MaskIoU, mask_counts

#: IoU at or above which a mask counts as correct.
IOU_THRESHOLD = 0.5


def score_mask(pred_mask: np.ndarray | None, item: EvalItem) -> SampleResult:
    """Pixel counts and IoU >= 0.5 for a (H, W) bool prediction (``None`` = no mask predicted)."""
    target = item.load_gt_mask()
    pred = np.zeros_like(target) if pred_mask is None else np.asarray(pred_mask, dtype=bool)
    if pred.shape != target.shape:
        raise MaskShapeError(
            f"{item.benchmark} {item.id}: predicted mask is {pred.shape}, image is {target.shape}"
        )
    intersection, union = mask_counts(pred, target, item.load_ignore_mask())
    iou = 1.0 if union == 0 else intersection / union
    return SampleResult(
        id=item.id,
        correct=iou >= IOU_THRESHOLD,
        extracted=None if pred_mask is None else "mask",
        rule="mask" if pred_mask is not None else "none",
        groups=dict(item.groups),
        intersection=intersection,
        union=union,
    )


def summarize_masks(results: Sequence[SampleResult]) -> dict[str, float]:
    """cIoU, gIoU, precision@0.5 and the number of samples without a predicted mask."""
    accumulator = MaskIoU()
    for result in results:
        if result.intersection is None or result.union is None:
            raise ValueError(f"result {result.id} has no pixel counts; was it scored by score_mask?")
        accumulator.add_counts(result.intersection, result.union)
    n = len(results)
    return {
        "ciou": accumulator.ciou,
        "giou": accumulator.giou,
        "precision@0.5": sum(r.correct for r in results) / n if n else float("nan"),
        "no_mask": float(sum(r.rule == "none" for r in results)),
        "n": float(n),
    }
