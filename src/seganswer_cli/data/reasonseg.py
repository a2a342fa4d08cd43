"""ReasonSeg (LISA): images with labelme-style JSON polygons and implicit queries.

Layout (LISA's ``reason_seg/ReasonSeg``)::

    ReasonSeg/
      train/  <name>.jpg  <name>.json
      val/    ...
      test/   ...

Each JSON holds ``text`` (a list of queries, or one string), ``is_sentence`` (long reasoning
sentence vs short phrase) and ``shapes``: ``[{"label": "target" | "ignore" | "flag", "points":
[[x, y], ...]}, ...]``. As in LISA, polygons are painted from the largest to the smallest area,
so a small polygon inside a big one wins; ``target`` paints the ground truth, ``ignore`` paints
pixels excluded from scoring, ``flag`` shapes are deprecated and skipped. Polygons are rasterized
with pycocotools (pixel-centre rule), which may differ from OpenCV's fill on boundary pixels.
One ``SegSample`` per query.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from seganswer_cli.data.locate import find_dir
from seganswer_cli.data.onerror import RecordErrors
from seganswer_cli.data.samples import ImageRef, LazyMask, SegSample
from seganswer_cli.errors import DataError
from seganswer_cli.masks import check_polygons_inside, polygons_to_mask, polygons_to_rle, rle_area

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def reasonseg_root(path: Path) -> Path:
    """The folder holding ``train/``, ``val/``, ``test/`` (or the split folder itself)."""
    path = Path(path)
    if path.is_dir() and path.name in SPLITS and list(path.glob("*.json")):
        return path.parent
    for candidate in (path, path / "ReasonSeg", path / "reason_seg" / "ReasonSeg"):
        if any((candidate / s).is_dir() for s in SPLITS):
            return candidate
    return find_dir(path, ["ReasonSeg", "reason_seg/ReasonSeg"], "ReasonSeg folder (with train/ val/ test/)")


def looks_like_reasonseg(path: Path) -> bool:
    """True when ``path`` is a ReasonSeg root (or split folder) with labelme JSONs carrying ``is_sentence``."""
    path = Path(path)
    folders = [path] if path.name in SPLITS else [path / s for s in SPLITS] + [path / "ReasonSeg" / s for s in SPLITS]
    for folder in folders:
        for json_file in sorted(folder.glob("*.json"))[:1] if folder.is_dir() else []:
            try:
                with open(json_file, encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                return False
            return isinstance(record, dict) and "shapes" in record and "is_sentence" in record
    return False


def read_reasonseg(
    path: Path, *, split: str | None = None, errors: RecordErrors | None = None
) -> Iterator[SegSample]:
    """Yield one ``SegSample`` per query of every (or one) split."""
    errors = errors or RecordErrors()
    path = Path(path)
    if path.is_dir() and path.name in SPLITS and list(path.glob("*.json")):
        split_dirs = [path]
    else:
        root = reasonseg_root(path)
        wanted = [split] if split else list(SPLITS)
        split_dirs = [root / s for s in wanted if (root / s).is_dir()]
        if not split_dirs:
            raise DataError(f"ReasonSeg split {split!r} not found under {root}")
    for split_dir in split_dirs:
        for json_file in sorted(split_dir.glob("*.json")):
            built = errors.attempt(json_file, json_file.stem,
                                   lambda json_file=json_file, split=split_dir.name: _record_to_samples(json_file, split))
            if built:
                yield from built


def _load_json(json_file: Path) -> dict:
    try:
        text = json_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        # a few published files are cp1252-encoded (LISA reads them the same way)
        text = json_file.read_text(encoding="cp1252")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise DataError("expected a JSON object")
    return record


def _record_to_samples(json_file: Path, split: str) -> list[SegSample]:
    record = _load_json(json_file)
    image_path = next((json_file.with_suffix(s) for s in IMAGE_SUFFIXES if json_file.with_suffix(s).is_file()), None)
    if image_path is None:
        raise DataError(f"image not found: expected {json_file.with_suffix('.jpg')} next to its JSON")
    height, width = record.get("imageHeight"), record.get("imageWidth")
    if not height or not width:
        with Image.open(image_path) as img:
            width, height = img.size
    height, width = int(height), int(width)

    # (label, flat polygon) for every non-deprecated shape, checked against the image bounds now
    shapes = []
    for i, shape in enumerate(record["shapes"]):
        label = str(shape["label"]).lower()
        if label == "flag":
            continue
        polygon = [float(v) for point in shape["points"] for v in point[:2]]
        try:
            check_polygons_inside([polygon], height, width)
        except ValueError as e:
            raise ValueError(f"shape {i} ({label}): {e}") from None
        shapes.append(("ignore" if "ignore" in label else "target", polygon))
    if not any(label == "target" for label, _ in shapes):
        raise ValueError("no 'target' shape")

    texts = record["text"]
    if isinstance(texts, str):
        texts = [texts]
    texts = [t.strip() for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("no query in 'text'")

    def paint() -> np.ndarray:
        # (H, W) uint8 label map: 0 background, 1 target, 255 ignore; largest polygons first
        ordered = sorted(shapes, key=lambda s: rle_area(polygons_to_rle([s[1]], height, width)), reverse=True)
        label_map = np.zeros((height, width), dtype=np.uint8)
        for label, polygon in ordered:
            label_map[polygons_to_mask([polygon], height, width)] = 255 if label == "ignore" else 1
        return label_map

    target = LazyMask.from_loader(lambda: paint() == 1, (height, width))
    ignore = LazyMask.from_loader(lambda: paint() == 255, (height, width)) if any(
        label == "ignore" for label, _ in shapes) else None
    image = ImageRef(path=image_path, name=image_path.name)
    is_sentence = bool(record.get("is_sentence", False))
    return [
        SegSample(id=f"reasonseg:{split}:{json_file.stem}:{i}", image=image, expression=text, mask=target,
                  source="reasonseg", split=split, ignore_mask=ignore, extra={"is_sentence": is_sentence})
        for i, text in enumerate(texts)
    ]
