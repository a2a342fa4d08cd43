"""The types every benchmark reader returns and every scorer consumes.

An ``EvalItem`` is one question (or one referring expression) in a benchmark-neutral form: where its
image is, the prompt to send, the options, the ground truth and the keys grouped metrics need. A
``SampleResult`` is one scored prediction; it round-trips through JSON so a resumed run can rebuild
its summary from ``predictions.jsonl`` without re-running the model.

Images are referenced, not held: a path on disk, or a ``LazyImage`` that knows how to fetch the
encoded bytes (a base64 cell of a multi-GB TSV, a row of a parquet file) only when asked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from seganswer_cli.images import load_image

#: How an answer is checked: a letter among ``options``, yes/no, free text, a number, a maths
#: expression (``eval/answers.py::verify_math``), or a mask.
AnswerKind = Literal["choice", "yesno", "text", "number", "math", "mask"]


@dataclass(frozen=True)
class LazyImage:
    """Encoded image bytes fetched on demand (``fetch()``), named by ``label`` in error messages."""

    fetch: Callable[[], bytes]
    label: str

    def __repr__(self) -> str:
        return f"LazyImage({self.label})"


ImageRef = str | os.PathLike | bytes | LazyImage


@dataclass
class EvalItem:
    """One benchmark sample, ready to prompt and to score."""

    id: str
    """Unique within the benchmark split; predictions.jsonl is keyed by it (resume skips done ids)."""
    benchmark: str
    """Registry name (``vstar``, ``refcoco+``...)."""
    image: ImageRef | None
    """Path, encoded bytes or ``LazyImage``; ``None`` only for HallusionBench's text-only questions."""
    question: str
    """The question (or referring expression) as published, without options or instructions."""
    prompt: str
    """The full user text sent to the model: question, lettered options, answer-format instruction."""
    answer: str
    """Ground truth: an option letter, ``yes``/``no``, free text, or ``""`` for segmentation."""
    answer_kind: AnswerKind = "choice"
    options: dict[str, str] = field(default_factory=dict)
    """Letter -> option text, in letter order; empty when not multiple choice."""
    groups: dict[str, str] = field(default_factory=dict)
    """Keys grouped metrics need (category, circular group, HallusionBench ids, MMVP pair...)."""
    gt_rle: dict | None = None
    """Ground-truth mask as COCO RLE: the target of a segmentation benchmark, or the region a question
    is about (``shapes-vqa``), which ``eval --masks gt`` shows in place of the model's mask."""
    ignore_rle: dict | None = None
    """Pixels excluded from IoU (ReasonSeg ``ignore`` polygons), as COCO RLE."""

    def load_image(self) -> Image.Image:
        """Decode the image as RGB (``ImageReadError`` naming the file when it is missing or broken)."""
        if self.image is None:
            raise ValueError(f"item {self.id} of {self.benchmark} has no image (text-only question)")
        if isinstance(self.image, LazyImage):
            return load_image(self.image.fetch(), name=self.image.label)
        return load_image(self.image)

    def load_gt_mask(self) -> np.ndarray:
        """The (H, W) bool ground-truth mask."""
        from seganswer_cli.masks import decode_rle

        if self.gt_rle is None:
            raise ValueError(f"item {self.id} of {self.benchmark} has no ground-truth mask")
        return decode_rle(self.gt_rle)

    def load_ignore_mask(self) -> np.ndarray | None:
        """The (H, W) bool mask of pixels to leave out of IoU, or ``None``."""
        from seganswer_cli.masks import decode_rle

        return None if self.ignore_rle is None else decode_rle(self.ignore_rle)


@dataclass(frozen=True)
class MissingImage:
    """A record whose image file was not found; reported, never silently dropped."""

    item_id: str
    expected: str
    """The path (or name) the record points at."""
    looked_in: tuple[str, ...]
    """Folders searched."""

    def __str__(self) -> str:
        return f"{self.item_id}: image {self.expected!r} not found (looked in {', '.join(self.looked_in)})"


@dataclass
class BenchmarkData:
    """What a reader returns: the items whose image exists, and the records whose image is missing.

    Missing records are kept out of ``items`` but listed in ``missing``, so the caller decides: fail
    (the default in the CLI) or go on with ``--skip-missing`` and report the count.
    """

    items: list[EvalItem]
    missing: list[MissingImage] = field(default_factory=list)
    source: str = ""
    """The file the items were read from (shown in summaries)."""


@dataclass
class SampleResult:
    """One scored prediction: one line of ``predictions.jsonl`` (plus whatever the CLI adds)."""

    id: str
    correct: bool
    extracted: str | None = None
    """The answer extracted from the raw output (a letter, ``yes``/``no``, text), ``None`` if none."""
    rule: str = ""
    """Which extraction rule fired (see ``answers.py``), e.g. ``tag:letter`` or ``untagged:answer_prefix``."""
    answer: str = ""
    groups: dict[str, str] = field(default_factory=dict)
    intersection: int | None = None
    """Segmentation only: |pred ∩ gt| in pixels (ignore region excluded)."""
    union: int | None = None
    """Segmentation only: |pred ∪ gt| in pixels (ignore region excluded)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> SampleResult:
        """Rebuild from a ``predictions.jsonl`` line; unknown keys (raw output, RLE...) are ignored."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in record.items() if k in names})


def find_file(name: str | os.PathLike, folders: list[Path]) -> Path | None:
    """The first ``folder / name`` that exists, also trying just the file name (for records that carry
    a path prefix such as ``./hallusion_bench/`` which the unpacked archive may lack)."""
    name = Path(str(name).replace("\\", "/"))
    candidates = [name] if name.is_absolute() else []
    for folder in folders:
        candidates.append(folder / name)
        parts = name.parts
        # drop leading components one at a time: "./a/b/c.png" -> "b/c.png" -> "c.png"
        for start in range(1, len(parts)):
            candidates.append(folder.joinpath(*parts[start:]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None
