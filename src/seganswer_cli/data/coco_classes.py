"""COCO-style instance or part annotations as class-name referring segmentation.

Covers the sets published as a COCO ``instances`` JSON: COCO-Stuff's stuff/thing JSONs,
PACO-LVIS (``paco_lvis_v1_train.json``), PASCAL-Part (``train.json``), LVIS. The user points at
the JSON file, or a folder holding it (also under ``annotations/``); images are looked up next
to it (``images/``, ``train2017/``, ...), or in ``images=``.

One ``SegSample`` per (image, category): the union of that category's instances, its expression
the category name made readable: ``dog:leg`` -> ``the leg of the dog`` (PACO, PASCAL-Part),
``apple_(fruit)`` -> ``apple`` (LVIS naming).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from seganswer_cli.data.locate import first_existing_dir
from seganswer_cli.data.onerror import RecordErrors
from seganswer_cli.data.samples import ImageRef, LazyMask, SegSample
from seganswer_cli.errors import DataError, read_json
from seganswer_cli.masks import check_polygons_inside, decode_rle, segmentation_to_rle

IMAGE_FOLDER_NAMES = ("images", "train2017", "val2017", "train2014", "JPEGImages", "")


def readable_class_name(name: str) -> str:
    """``dog:leg`` -> ``the leg of the dog``; ``apple_(fruit)`` -> ``apple``; ``traffic_light`` -> ``traffic light``.

    >>> readable_class_name("car_(automobile):wheel")
    'the wheel of the car'
    """

    def clean(part: str) -> str:
        return part.split("_(")[0].replace("_", " ").strip()

    if ":" in name:
        whole, part = name.split(":", 1)
        return f"the {clean(part)} of the {clean(whole)}"
    return clean(name)


def find_annotation_json(path: Path) -> Path:
    """The COCO JSON at ``path`` (a file, or the single ``*.json`` in it or in its ``annotations/``)."""
    path = Path(path)
    if path.is_file():
        return path
    candidates = sorted(path.glob("*.json")) + sorted((path / "annotations").glob("*.json"))
    coco = [c for c in candidates if _is_coco_json(c)]
    if len(coco) == 1:
        return coco[0]
    if not coco:
        raise DataError(f"no COCO-style annotation JSON found in {path} or {path / 'annotations'}")
    raise DataError(f"several annotation JSONs in {path}: {', '.join(c.name for c in coco)}; point at one")


def _is_coco_json(file: Path) -> bool:
    # read only the head: annotation files can be gigabytes
    with open(file, encoding="utf-8", errors="replace") as f:
        head = f.read(1 << 16)
    return '"annotations"' in head or '"categories"' in head or '"images"' in head


def looks_like_coco(path: Path) -> bool:
    """True for a COCO instances JSON (or a folder with exactly one)."""
    try:
        return _is_coco_json(find_annotation_json(path))
    except (DataError, OSError):
        return False


def read_coco_classes(
    path: Path, *, images: Path | None = None, source: str | None = None, errors: RecordErrors | None = None
) -> Iterator[SegSample]:
    """Yield one ``SegSample`` per (image, category present)."""
    errors = errors or RecordErrors()
    ann_file = find_annotation_json(Path(path))
    coco = read_json(ann_file)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{ann_file}: missing the COCO list {key!r}")
    source = source or ann_file.stem
    image_dir = _image_dir(ann_file, images)
    categories = {c["id"]: readable_class_name(c["name"]) for c in coco["categories"]}
    by_image: dict[int, dict[int, list[tuple[int, dict]]]] = defaultdict(lambda: defaultdict(list))
    for index, ann in enumerate(coco["annotations"]):
        try:
            by_image[ann["image_id"]][ann["category_id"]].append((index, ann))
        except (KeyError, TypeError):
            errors.fail(ann_file, f"annotations[{index}]", "needs image_id and category_id")
    for img in coco["images"]:
        groups = by_image.get(img.get("id"), {})
        for category_id, anns in sorted(groups.items()):
            label = f"image {img.get('id')} category {category_id}"
            sample = errors.attempt(ann_file, label, lambda img=img, category_id=category_id, anns=anns:
                                    _group_to_sample(img, category_id, anns, categories, image_dir, source))
            if sample is not None:
                yield sample


def _image_dir(ann_file: Path, images: Path | None) -> Path:
    if images is not None:
        if not Path(images).is_dir():
            raise DataError(f"image folder not found: {images} (given with --images)")
        return Path(images)
    bases = [ann_file.parent, ann_file.parent.parent]
    found = first_existing_dir(b / n for b in bases for n in IMAGE_FOLDER_NAMES if n)
    return found or ann_file.parent


def _group_to_sample(img: dict, category_id: int, anns: list[tuple[int, dict]], categories: dict,
                     image_dir: Path, source: str) -> SegSample:
    if category_id not in categories:
        raise ValueError(f"category_id {category_id} is not in 'categories'")
    height, width = int(img["height"]), int(img["width"])
    image_path = image_dir / img["file_name"]
    if not image_path.is_file():
        raise DataError(f"image not found: {image_path}")
    segmentations = []
    for index, ann in anns:
        segmentation = ann["segmentation"]
        if isinstance(segmentation, list) and segmentation and isinstance(segmentation[0], list):
            try:
                check_polygons_inside(segmentation, height, width)
            except ValueError as e:
                raise ValueError(f"annotation {ann.get('id', index)}: {e}") from None
        segmentations.append(segmentation)

    def union() -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        for segmentation in segmentations:
            mask |= decode_rle(segmentation_to_rle(segmentation, height, width))
        return mask

    return SegSample(
        id=f"{source}:{img['id']}:{category_id}",
        image=ImageRef(path=image_path, name=img["file_name"]),
        expression=categories[category_id],
        mask=LazyMask.from_loader(union, (height, width)),
        source=source,
        extra={"category_id": category_id, "ann_ids": [a.get("id") for _, a in anns]},
    )
