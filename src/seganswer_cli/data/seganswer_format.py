"""The seganswer dataset folder: what ``seganswer data synth`` writes and every training command reads.

Layout::

    DIR/
      seganswer_data.json   manifest: {"format": "seganswer", "version": 1, "kind": "refseg"|"vqa"|"rl",
                            "count": N, "settings": {...how it was made...}}
      records.jsonl         one JSON object per sample (below)
      images/000000.png     images, referenced from the records by a path relative to DIR

A segmentation record::

    {"type": "seg", "id": "...", "image": "images/000000.png", "width": W, "height": H,
     "expression": "the red triangle", "mask": {"size": [H, W], "counts": "<COCO RLE>"},
     "source": "shapes", "split": null, "extra": {...}}

A question-answer record::

    {"type": "vqa", "id": "...", "image": "images/000001.png", "width": W, "height": H,
     "question": "...", "answer": "red", "answer_type": "choice"|"text"|"number"|"math",
     "options": ["red", "blue", ...], "answer_letter": "A" | null,
     "region_masks": [<RLE>, ...], "region_boxes": [[x0, y0, x1, y1], ...],
     "source": "shapes-vqa", "split": null, "extra": {...}}

Masks are COCO compressed RLE with ``counts`` as a string (``seganswer_cli.masks``). ``extra``
is free-form; the shapes world stores its scene graph there (``extra["scene"]``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from seganswer_cli.data.onerror import RecordErrors
from seganswer_cli.data.samples import ImageRef, LazyMask, SegSample, VQASample
from seganswer_cli.errors import DataError, read_json

FORMAT_NAME = "seganswer"
FORMAT_VERSION = 1
MANIFEST = "seganswer_data.json"
RECORDS = "records.jsonl"


def looks_like_seganswer(path: Path) -> bool:
    """True for a folder (or its records file) written in this format."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    return (folder / MANIFEST).is_file()


def read_manifest(path: Path) -> dict:
    """The manifest of a seganswer dataset folder."""
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    file = folder / MANIFEST
    if not file.is_file():
        raise DataError(f"not a seganswer dataset: {file} not found")
    manifest = read_json(file)
    if manifest.get("format") != FORMAT_NAME:
        raise DataError(f"{file}: format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    if manifest.get("version", 0) > FORMAT_VERSION:
        raise DataError(f"{file}: version {manifest['version']} is newer than this seganswer reads ({FORMAT_VERSION})")
    return manifest


def sample_to_record(sample: SegSample | VQASample, image: str, width: int, height: int) -> dict[str, Any]:
    """The JSON record of a sample whose image is stored at ``image`` (relative to the folder)."""
    if isinstance(sample, SegSample):
        return {
            "type": "seg", "id": sample.id, "image": image, "width": width, "height": height,
            "expression": sample.expression, "mask": sample.mask.to_rle(), "source": sample.source,
            "split": sample.split, "extra": sample.extra,
        }
    return {
        "type": "vqa", "id": sample.id, "image": image, "width": width, "height": height,
        "question": sample.question, "answer": sample.answer, "answer_type": sample.answer_type,
        "options": list(sample.options), "answer_letter": sample.answer_letter,
        "region_masks": [m.to_rle() for m in sample.region_masks],
        "region_boxes": [list(b) for b in sample.region_boxes], "source": sample.source,
        "split": sample.split, "extra": sample.extra,
    }


def write_dataset(folder: Path, kind: str, records: Iterable[dict[str, Any]], settings: dict[str, Any]) -> int:
    """Write ``records.jsonl`` and the manifest into ``folder`` (images are written by the caller).

    Output is byte-for-byte reproducible: no timestamps, fixed key order, ``\\n`` line ends.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(folder / RECORDS, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
            count += 1
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": kind, "count": count,
                "records": RECORDS, "settings": settings}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8", newline="\n")
    return count


def read_seganswer(path: Path, *, errors: RecordErrors | None = None) -> Iterator[SegSample | VQASample]:
    """Yield the samples of a seganswer dataset folder."""
    errors = errors or RecordErrors()
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    manifest = read_manifest(folder)
    records_file = folder / manifest.get("records", RECORDS)
    if not records_file.is_file():
        raise DataError(f"records file not found: {records_file} (named by {folder / MANIFEST})")
    with open(records_file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            sample = errors.attempt(records_file, f"line {line_no}",
                                    lambda line=line: record_to_sample(json.loads(line), folder))
            if sample is not None:
                yield sample


def record_to_sample(record: dict, folder: Path) -> SegSample | VQASample:
    """A sample from one record; checks the image exists and masks match its size."""
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    image_path = folder / record["image"]
    if not image_path.is_file():
        raise DataError(f"image not found: {image_path}")
    image = ImageRef(path=image_path, name=record["image"])
    size = [int(record["height"]), int(record["width"])]

    def mask(rle: dict, what: str) -> LazyMask:
        if [int(s) for s in rle["size"]] != size:
            raise ValueError(f"{what} size {rle['size']} does not match the image size [H, W] = {size}")
        return LazyMask.from_rle(rle)

    if record["type"] == "seg":
        return SegSample(id=str(record["id"]), image=image, expression=record["expression"],
                         mask=mask(record["mask"], "mask"), source=record.get("source", FORMAT_NAME),
                         split=record.get("split"), extra=record.get("extra") or {})
    if record["type"] == "vqa":
        return VQASample(
            id=str(record["id"]), image=image, question=record["question"], answer=str(record["answer"]),
            source=record.get("source", FORMAT_NAME), options=list(record.get("options") or []),
            answer_letter=record.get("answer_letter"), answer_type=record.get("answer_type", "text"),
            region_masks=[mask(r, f"region_masks[{i}]") for i, r in enumerate(record.get("region_masks") or [])],
            region_boxes=[tuple(float(v) for v in b) for b in record.get("region_boxes") or []],
            split=record.get("split"), extra=record.get("extra") or {},
        )
    raise ValueError(f"unknown record type {record['type']!r} (expected 'seg' or 'vqa')")
