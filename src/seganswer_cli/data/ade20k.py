"""ADE20K scene parsing (``ADEChallengeData2016``) as class-name referring segmentation.

Layout::

    ADEChallengeData2016/
      images/training/ADE_train_00000001.jpg       images/validation/...
      annotations/training/ADE_train_00000001.png  annotations/validation/...
      objectInfo150.txt   (tab-separated: Idx Ratio Train Val Name; or objectInfo150.csv,
                           or a JSON list of 150 names such as LISA's ade20k_classes.json)

A label map pixel ``v`` in 1..150 belongs to class ``v`` (the ``Idx`` column); 0 is "other"
and never referred to. One ``SegSample`` per (image, class present), its expression the class's
first name (``building, edifice`` -> ``building``). Label maps are read once, when indexing.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from seganswer_cli.data.locate import find_dir
from seganswer_cli.data.onerror import RecordErrors
from seganswer_cli.data.samples import ImageRef, LazyMask, SegSample
from seganswer_cli.errors import DataError
from seganswer_cli.masks import encode_rle

SPLIT_FOLDERS = {"train": "training", "val": "validation"}
CLASS_FILES = ("objectInfo150.txt", "objectInfo150.csv", "ade20k_classes.json", "classes.json", "classes.txt")


def ade20k_root(path: Path) -> Path:
    """The folder holding ``images/`` and ``annotations/``."""
    path = Path(path)
    for candidate in (path, path / "ADEChallengeData2016", path / "ade20k"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    root = find_dir(path, ["ADEChallengeData2016", ""], "ADE20K folder (with images/ and annotations/)")
    if not (root / "annotations").is_dir():
        raise DataError(f"ADE20K folder {root} has no annotations/ folder")
    return root


def looks_like_ade20k(path: Path) -> bool:
    """True for an ``ADEChallengeData2016``-style folder."""
    path = Path(path)
    return any(
        (c / "images").is_dir() and (c / "annotations").is_dir() and any((c / n).is_file() for n in CLASS_FILES)
        for c in (path, path / "ADEChallengeData2016")
    )


def load_class_names(root: Path) -> tuple[Path, list[str]]:
    """Class names in label order (index 0 is label value 1) and the file they came from."""
    for name in CLASS_FILES:
        for folder in (root, root.parent):
            file = folder / name
            if file.is_file():
                return file, _parse_class_file(file)
    raise DataError(f"ADE20K class list not found: expected one of {', '.join(CLASS_FILES)} in {root}")


def _parse_class_file(file: Path) -> list[str]:
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        names = json.loads(text)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{file}: expected a JSON list of class names")
        return [n.split(",")[0].split(";")[0].strip() for n in names]
    if file.suffix == ".txt" and "\t" not in text.splitlines()[0]:
        return [line.strip() for line in text.splitlines() if line.strip()]
    delimiter = "\t" if file.suffix == ".txt" else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    header = [h.strip().lower() for h in rows[0]]
    if "name" not in header or "idx" not in header:
        raise DataError(f"{file}: expected columns Idx and Name, got {rows[0]}")
    idx_col, name_col = header.index("idx"), header.index("name")
    by_index = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            by_index[int(row[idx_col])] = row[name_col].split(",")[0].split(";")[0].strip()
        except (ValueError, IndexError):
            raise DataError(f"{file}: line {line_no}: malformed row {row}") from None
    if sorted(by_index) != list(range(1, len(by_index) + 1)):
        raise DataError(f"{file}: class indices must run 1..N without gaps")
    return [by_index[i] for i in range(1, len(by_index) + 1)]


def read_ade20k(
    path: Path, *, split: str | None = None, errors: RecordErrors | None = None
) -> Iterator[SegSample]:
    """Yield one ``SegSample`` per (image, class present in its label map)."""
    errors = errors or RecordErrors()
    root = ade20k_root(Path(path))
    class_file, classes = load_class_names(root)
    splits = [split] if split else list(SPLIT_FOLDERS)
    for name in splits:
        if name not in SPLIT_FOLDERS:
            raise DataError(f"ADE20K split must be train or val, got {name!r}")
        ann_dir = root / "annotations" / SPLIT_FOLDERS[name]
        img_dir = root / "images" / SPLIT_FOLDERS[name]
        if not ann_dir.is_dir():
            if split:
                raise DataError(f"ADE20K annotations not found: {ann_dir}")
            continue
        for label_file in sorted(ann_dir.glob("*.png")):
            built = errors.attempt(label_file, label_file.stem, lambda label_file=label_file, img_dir=img_dir, name=name:
                                   _label_map_to_samples(label_file, img_dir, classes, class_file, name))
            if built:
                yield from built


def _label_map_to_samples(label_file: Path, img_dir: Path, classes: list[str], class_file: Path,
                          split: str) -> list[SegSample]:
    image_path = next((img_dir / f"{label_file.stem}{s}" for s in (".jpg", ".png") if
                       (img_dir / f"{label_file.stem}{s}").is_file()), None)
    if image_path is None:
        raise DataError(f"image not found: expected {img_dir / (label_file.stem + '.jpg')}")
    try:
        with Image.open(label_file) as img:
            label_map = np.asarray(img)  # (H, W) uint8 label values
    except OSError as e:
        raise DataError(f"cannot read label map: {e}") from None
    if label_map.ndim != 2:
        raise ValueError(f"label map must be single-channel, got shape {label_map.shape}")
    with Image.open(image_path) as img:
        width, height = img.size
    if label_map.shape != (height, width):
        raise ValueError(f"label map is {label_map.shape[1]}x{label_map.shape[0]} but the image is {width}x{height}")
    values = [int(v) for v in np.unique(label_map) if v != 0]
    unknown = [v for v in values if v > len(classes)]
    if unknown:
        raise ValueError(f"label values {unknown} are beyond the {len(classes)} classes of {class_file.name}")
    image = ImageRef(path=image_path, name=image_path.name)
    return [
        SegSample(id=f"ade20k:{split}:{label_file.stem}:{v}", image=image, expression=classes[v - 1],
                  mask=LazyMask.from_rle(encode_rle(label_map == v)), source="ade20k", split=split,
                  extra={"class_index": v})
        for v in values
    ]
