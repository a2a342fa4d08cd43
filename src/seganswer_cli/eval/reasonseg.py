"""ReasonSeg (Lai et al., 2024, LISA): segmentation from implicit queries that need reasoning.

Data (``--data``): the folder holding the splits (LISA's ``reason_seg/ReasonSeg``)::

    ReasonSeg/
      val/    <name>.jpg + <name>.json   (LabelMe-style: {"text": ["the thing that ..."], "is_sentence": true,
      test/                                "shapes": [{"label": "target", "points": [[x, y], ...],
      train/                                          "shape_type": "polygon"}, {"label": "ignore", ...}]})

Shapes labelled ``target`` form the mask; ``ignore`` pixels count for neither intersection nor union
(LISA evaluates with ignore index 255); ``flag`` shapes are skipped. As in LISA, shapes are painted
largest first so a smaller shape drawn later wins where they overlap. Polygons are rasterized with
pycocotools (LISA uses OpenCV; boundaries can differ by a pixel).

One item per query text. Prompt (LISA's templates): a full sentence -> "<text> Please output
segmentation mask."; a short phrase -> "Can you segment the <text> in this image?".
Metrics: cIoU, gIoU (segmentation.py). ``--split`` is ``val`` (default), ``test`` or ``train``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.items import BenchmarkData, EvalItem, MissingImage
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import read_text
from seganswer_cli.eval.segmentation import score_mask, summarize_masks
from seganswer_cli.masks import decode_rle, encode_rle, polygons_to_rle

NAME = "reasonseg"
SPLITS = ("val", "test", "train")
DEFAULT_SPLIT = "val"

PROTOCOL = Protocol(
    prompt="LISA's templates: '<text> Please output segmentation mask.' or 'Can you segment the <text> in this image?'",
    extraction="the predicted mask of the <|seg|> token",
    metrics="gIoU (mean per-sample IoU) and cIoU (summed intersection over summed union), ignore region excluded",
    source="dvlab-research/LISA: train_ds.py (validate), utils/utils.py",
    departures=("polygons rasterized with pycocotools, not OpenCV: boundaries can differ by a pixel",),
)
SENTENCE_PROMPT = "{text} Please output segmentation mask."
PHRASE_PROMPT = "Can you segment the {text} in this image?"
IGNORE_LABEL = 255

score = score_mask
summarize = summarize_masks


def read(root: Path, split: str | None = None) -> BenchmarkData:
    """Items of ``split`` from the folder holding ``val/`` (or the split folder itself)."""
    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise UsageError(f"{NAME}: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    root = Path(root)
    candidates = [root / split, root / "ReasonSeg" / split, root / "reason_seg" / "ReasonSeg" / split, root]
    folder = next((c for c in candidates if c.is_dir() and any(c.glob("*.json"))), None)
    if folder is None:
        raise DataError(
            f"{NAME}: expected {split}/ with <name>.json + <name>.jpg pairs; looked in "
            + ", ".join(str(c) for c in candidates)
        )
    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    for json_path in sorted(folder.glob("*.json")):
        image_path = next(
            (p for ext in (".jpg", ".png", ".jpeg") if (p := json_path.with_suffix(ext)).is_file()), None
        )
        if image_path is None:
            missing.append(MissingImage(json_path.stem, json_path.with_suffix(".jpg").name, (str(folder),)))
            continue
        try:
            record = json.loads(read_text(json_path))
        except json.JSONDecodeError as e:
            raise DataError(f"{json_path}: not valid JSON: {e}") from None
        texts = record.get("text")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        if not texts or "shapes" not in record:
            raise DataError(f"{json_path}: needs 'text' and 'shapes'")
        height, width = _image_size(record, image_path)
        target_rle, ignore_rle = _masks_from_shapes(record["shapes"], height, width, json_path)
        template = SENTENCE_PROMPT if record.get("is_sentence") else PHRASE_PROMPT
        for number, text in enumerate(texts):
            text = str(text).strip()
            items.append(
                EvalItem(
                    id=f"{json_path.stem}_{number}",
                    benchmark=NAME,
                    image=image_path,
                    question=text,
                    prompt=template.format(text=text),
                    answer="",
                    answer_kind="mask",
                    groups={"image": json_path.stem, "is_sentence": str(bool(record.get("is_sentence")))},
                    gt_rle=target_rle,
                    ignore_rle=ignore_rle,
                )
            )
    return BenchmarkData(items, missing, source=str(folder))


def _image_size(record: dict, image_path: Path) -> tuple[int, int]:
    """(H, W) from LabelMe's ``imageHeight``/``imageWidth``, else from the image header (no decoding)."""
    if record.get("imageHeight") and record.get("imageWidth"):
        return int(record["imageHeight"]), int(record["imageWidth"])
    with Image.open(image_path) as image:
        return image.height, image.width


def _polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a (N, 2) polygon."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _masks_from_shapes(shapes: list, height: int, width: int, path: Path) -> tuple[dict, dict | None]:
    """(target RLE, ignore RLE or None), painting shapes largest first (LISA's ``get_mask_from_json``)."""
    painted = []
    for index, shape in enumerate(shapes):
        label = str(shape.get("label", "")).lower()
        if label == "flag":
            continue
        points = np.asarray(shape.get("points", []), dtype=np.float64)  # (N, 2)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
            raise DataError(f"{path}: shape {index} needs >= 3 [x, y] points")
        # annotators click past the border; OpenCV's fillPoly (LISA) clips there, so do we
        points = np.clip(points, 0, [width, height])
        painted.append((_polygon_area(points), IGNORE_LABEL if label == "ignore" else 1, points))
    labels = np.zeros((height, width), dtype=np.uint8)  # (H, W): 0 background, 1 target, 255 ignore
    for _, value, points in sorted(painted, key=lambda p: p[0], reverse=True):
        try:
            region = decode_rle(polygons_to_rle([points.reshape(-1).tolist()], height, width))
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None
        labels[region] = value
    ignore = labels == IGNORE_LABEL
    return encode_rle(labels == 1), (encode_rle(ignore) if ignore.any() else None)
