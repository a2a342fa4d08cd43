"""VisualCoT (Shao et al., 2024): question-answer pairs with boxes around the answering region.

Two published forms are read:

* the per-source metadata JSONL (``metadata/*_cot_train.jsonl``, one record a line):
  ``{"question", "answer", "image", "width", "height", "bboxs": [[x0, y0, x1, y1], ...],
  "dataset", "split"}``; the image lives at ``cot/<dataset>/<image>`` (``textcap`` images under
  ``cot/textvqa``);
* the LLaVA-style ``viscot_363k.json`` (a JSON list): ``{"question_id", "image": [path,
  "path###[x0, y0, x1, y1]"], "conversations": [human question + box prompt, gpt box, human,
  gpt answer], "dataset", "split"}``, image paths relative to the data root.

The user points at the folder holding the annotation file(s) and the ``cot/`` image tree (or
passes ``images=``). Boxes are kept in ``region_boxes`` for analysis only: the paper trains
Stage 2 on the answers alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from seganswer_cli.data.onerror import RecordErrors
from seganswer_cli.data.samples import ImageRef, VQASample
from seganswer_cli.errors import DataError

# The box-request prompt VisualCoT appends to every question in its LLaVA-format file.
_BOX_PROMPT = re.compile(r"\s*Please (think step by step and )?provide the bounding box coordinate.*$", re.S)
_BOX_IN_PATH = re.compile(r"###\s*\[([^\]]*)\]")


def annotation_files(path: Path) -> list[Path]:
    """The VisualCoT annotation files at ``path``: JSONL metadata, or ``viscot*.json``."""
    path = Path(path)
    if path.is_file():
        return [path]
    for folder in (path, path / "metadata", path / "viscot_dataset"):
        files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
        if files:
            return files
    files = sorted(path.glob("viscot*.json"))
    if files:
        return files[:1]  # viscot_363k.json and viscot_mixed_2m.json overlap; take one
    raise DataError(
        f"VisualCoT annotations not found: expected *.jsonl in {path}, {path / 'metadata'} "
        f"or {path / 'viscot_dataset'}, or viscot_363k.json in {path}"
    )


def looks_like_visualcot(path: Path) -> bool:
    """True when the first record of the first annotation file has VisualCoT's fields."""
    try:
        files = annotation_files(path)
    except DataError:
        return False
    file = files[0]
    if file.suffix not in (".json", ".jsonl"):
        return False
    try:
        with open(file, encoding="utf-8") as f:
            head = f.read(4096)
    except OSError:
        return False
    return '"bboxs"' in head or ("###" in head and '"conversations"' in head)


def _image_root(path: Path, images: Path | None) -> Path:
    if images is not None:
        if not Path(images).is_dir():
            raise DataError(f"image folder not found: {images} (given with --images)")
        return Path(images)
    path = Path(path)
    base = path.parent if path.is_file() else path
    for candidate in (base, base.parent, base / "images", base / "playground" / "data"):
        if (candidate / "cot").is_dir():
            return candidate
    return base


def read_visualcot(
    path: Path, *, images: Path | None = None, split: str | None = None, errors: RecordErrors | None = None
) -> Iterator[VQASample]:
    """Yield one ``VQASample`` per question."""
    errors = errors or RecordErrors()
    root = _image_root(Path(path), images)
    for file in annotation_files(Path(path)):
        if file.suffix == ".jsonl":
            records = _jsonl_records(file, errors)
            convert = _metadata_record
        else:
            records = _json_list_records(file)
            convert = _llava_record
        for label, record in records:
            sample = errors.attempt(file, label, lambda record=record, label=label, file=file, convert=convert:
                                    convert(record, label, root, file))
            if sample is not None and (split is None or sample.split == split):
                yield sample


def _jsonl_records(file: Path, errors: RecordErrors) -> Iterator[tuple[str, dict]]:
    with open(file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = errors.attempt(file, f"line {line_no}", lambda line=line: _parse_json_object(line))
            if record is not None:
                yield f"line {line_no}", record


def _parse_json_object(text: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    return record


def _json_list_records(file: Path) -> Iterator[tuple[str, dict]]:
    try:
        with open(file, encoding="utf-8") as f:
            records = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{file}: not valid JSON: {e}") from None
    if not isinstance(records, list):
        raise DataError(f"{file}: expected a JSON list of records")
    for index, record in enumerate(records):
        yield f"{index}", record


def _clipped_box(box, width: float | None, height: float | None) -> tuple[float, float, float, float]:
    """An (x0, y0, x1, y1) box clipped to the image; a box wholly outside or inverted is an error."""
    if not isinstance(box, list | tuple) or len(box) != 4:
        raise ValueError(f"box {box!r} is not [x0, y0, x1, y1]")
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {list(box)} has x1 < x0 or y1 < y0")
    if width and height:
        if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
            raise ValueError(f"box {list(box)} lies outside the {width:g}x{height:g} image")
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    return (x0, y0, x1, y1)


def _checked_image(root: Path, relative: str) -> ImageRef:
    image_path = root / relative
    if not image_path.is_file():
        raise DataError(f"image not found: {image_path}")
    return ImageRef(path=image_path, name=relative)


def _metadata_record(record: dict, label: str, root: Path, file: Path) -> VQASample:
    dataset = record["dataset"]
    folder = "textvqa" if dataset == "textcap" else dataset
    image = _checked_image(root, f"cot/{folder}/{record['image']}")
    width, height = record.get("width"), record.get("height")
    question, answer = str(record["question"]).strip(), str(record["answer"]).strip()
    if not question or not answer:
        raise ValueError("empty question or answer")
    return VQASample(
        id=f"visualcot:{dataset}:{file.stem}:{label.removeprefix('line ')}", image=image, question=question,
        answer=answer, source="visualcot", region_boxes=[_clipped_box(b, width, height) for b in record["bboxs"]],
        split=record.get("split"), extra={"dataset": dataset},
    )


def _llava_record(record: dict, label: str, root: Path, file: Path) -> VQASample:
    paths = record["image"]
    if isinstance(paths, str):
        paths = [paths]
    image = _checked_image(root, paths[0].split("###")[0])
    boxes = []
    for entry in paths[1:]:
        match = _BOX_IN_PATH.search(entry)
        if match:
            boxes.append(_clipped_box([float(v) for v in match.group(1).split(",")], None, None))
    turns = record["conversations"]
    human = [t["value"] for t in turns if t.get("from") == "human"]
    gpt = [t["value"] for t in turns if t.get("from") == "gpt"]
    if not human or not gpt:
        raise ValueError("conversations need a human question and a gpt answer")
    question = _BOX_PROMPT.sub("", human[0].replace("<image>", "")).strip()
    answer = str(gpt[-1]).strip()
    if not question or not answer:
        raise ValueError("empty question or answer")
    return VQASample(
        id=f"visualcot:{record.get('question_id', label)}", image=image, question=question, answer=answer,
        source="visualcot", region_boxes=boxes, split=record.get("split"),
        extra={"dataset": record.get("dataset")},
    )
