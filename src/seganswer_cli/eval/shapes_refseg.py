"""shapes-refseg: referring segmentation in the shapes world, offline (see ``shapes.py``).

Data: generated from a held-out seed when ``--data`` is not given, else a folder written by
``seganswer data synth --kind refseg``. Expressions name one or several shapes (``the red
triangle``, ``the square left of the blue star``, ``all red shapes``); the target is the union of
their visible pixels.

The model segments the expression with the paper's Stage 1 prompt; ``prompt`` is LISA's question
(as for RefCOCO) for tools that want a text prompt; shapes expressions carry their own article. Metrics: cIoU, gIoU, precision@0.5
(``segmentation.py``), and cIoU per ``targets`` group (``single`` / ``multiple`` objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seganswer_cli.data.samples import SegSample
from seganswer_cli.eval.items import BenchmarkData, EvalItem, SampleResult
from seganswer_cli.eval.metrics import MaskIoU
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.segmentation import score_mask, summarize_masks
from seganswer_cli.eval.shapes import DEFAULT_SPLIT, SPLITS, image_of, read_samples

NAME = "shapes-refseg"
PROMPT = "Can you segment {expression} in this image?"

PROTOCOL = Protocol(
    prompt="the paper's Stage 1 segmentation prompt with the expression",
    extraction="the predicted mask of the <|seg|> token",
    metrics="cIoU, gIoU, precision@0.5, cIoU per number of targets",
    source="this project: the shapes world, LISA's cIoU and gIoU",
)
__all__ = ["DEFAULT_SPLIT", "SPLITS", "read", "score", "summarize"]

score = score_mask


def read(root: Path | None, split: str | None = None, *, limit: int | None = None) -> BenchmarkData:
    """The expressions: generated (``root`` None; only the first ``limit``) or from a ``data synth --kind refseg`` folder."""
    samples, missing, source = read_samples(root, split, name=NAME, kind="refseg", limit=limit)
    return BenchmarkData([_item(s) for s in samples], missing, source=source)


def _item(sample: SegSample) -> EvalItem:
    targets = sample.extra.get("target_ids") or []
    return EvalItem(id=sample.id, benchmark=NAME, image=image_of(sample), question=sample.expression,
                    prompt=PROMPT.format(expression=sample.expression), answer="", answer_kind="mask",
                    groups={"targets": "multiple" if len(targets) > 1 else "single"}, gt_rle=sample.mask.to_rle())


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """cIoU, gIoU, precision@0.5, no_mask, n; plus ``ciou/single`` and ``ciou/multiple``."""
    summary = summarize_masks(results)
    for group in sorted({r.groups.get("targets", "single") for r in results}):
        accumulator = MaskIoU()
        for r in results:
            if r.groups.get("targets", "single") == group:
                accumulator.add_counts(r.intersection, r.union)
        summary[f"ciou/{group}"] = accumulator.ciou
    return summary
