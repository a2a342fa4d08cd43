"""The sample types every training stage and evaluation consumes, whatever the source.

Readers and the shapes world produce only these, so a stage never knows where a sample came
from. Images and masks are references, resolved on use: a sample is cheap to create and hold
(a few hundred bytes), so a reader can index a whole dataset without decoding any pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seganswer_cli.images import load_image
from seganswer_cli.masks import RLE, decode_rle, encode_rle, polygons_to_rle, rle_area, rle_bbox


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives: a file path, or encoded bytes embedded in the dataset (parquet variants)."""

    path: Path | None = None
    """Image file on disk; None when the bytes are embedded."""
    data: bytes | None = field(default=None, repr=False)
    """Encoded image bytes (PNG/JPEG) for datasets that embed images; None for files."""
    name: str = ""
    """A label for messages and tables: the file name inside the dataset, or the embedded image's name."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("ImageRef needs exactly one of path or data")

    def load(self) -> Image.Image:
        """Decode as an RGB ``PIL.Image``; raises ``ImageReadError`` naming the file when it cannot."""
        if self.data is not None:
            return load_image(self.data, name=self.name or "<embedded image>")
        return load_image(self.path)

    def describe(self) -> str:
        """Short text for tables: the path, or ``name (embedded)``."""
        return str(self.path) if self.path is not None else f"{self.name or 'image'} (embedded)"


class LazyMask:
    """A (H, W) bool mask kept in its stored form (RLE, polygons, or a loader) and decoded on use.

    ``decode()`` does the work each time it is called (nothing is cached) so holding many samples
    costs only their compact form.
    """

    __slots__ = ("_array", "_loader", "_polygons", "_rle", "_size")

    def __init__(
        self,
        *,
        rle: RLE | None = None,
        polygons: list[list[float]] | None = None,
        size: tuple[int, int] | None = None,
        loader: Callable[[], np.ndarray] | None = None,
        array: np.ndarray | None = None,
    ) -> None:
        given = sum(x is not None for x in (rle, polygons, loader, array))
        if given != 1:
            raise ValueError("LazyMask needs exactly one of rle, polygons, loader, array")
        if polygons is not None and size is None:
            raise ValueError("polygons need the image size (H, W)")
        self._rle = rle
        self._polygons = polygons
        self._loader = loader
        self._array = None if array is None else np.asarray(array, dtype=bool)
        if rle is not None:
            size = (int(rle["size"][0]), int(rle["size"][1]))
        elif self._array is not None:
            size = self._array.shape
        self._size = None if size is None else (int(size[0]), int(size[1]))

    @classmethod
    def from_rle(cls, rle: RLE) -> LazyMask:
        """A mask stored as a COCO RLE dict."""
        return cls(rle=rle)

    @classmethod
    def from_polygons(cls, polygons: list[list[float]], height: int, width: int) -> LazyMask:
        """A mask stored as COCO polygons of an image of ``height`` x ``width``."""
        return cls(polygons=polygons, size=(height, width))

    @classmethod
    def from_array(cls, array: np.ndarray) -> LazyMask:
        """A mask already decoded (kept as is)."""
        return cls(array=array)

    @classmethod
    def from_loader(cls, loader: Callable[[], np.ndarray], size: tuple[int, int] | None = None) -> LazyMask:
        """A mask computed by ``loader()`` on use (for example from a label-map PNG)."""
        return cls(loader=loader, size=size)

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W) when known without decoding, else None."""
        return self._size

    def decode(self) -> np.ndarray:
        """The (H, W) bool mask. Raises ``ValueError`` (malformed) or ``ImageReadError`` (loader)."""
        if self._array is not None:
            return self._array
        if self._rle is not None:
            return decode_rle(self._rle)
        if self._polygons is not None:
            return decode_rle(self.to_rle())
        mask = np.asarray(self._loader(), dtype=bool)
        if mask.ndim != 2:
            raise ValueError(f"mask loader returned shape {mask.shape}, expected (H, W)")
        return mask

    def to_rle(self) -> RLE:
        """The mask as a JSON-able COCO RLE (counts as str)."""
        if self._rle is not None:
            counts = self._rle["counts"]
            if isinstance(counts, str):
                return {"size": [int(s) for s in self._rle["size"]], "counts": counts}
            return encode_rle(decode_rle(self._rle))
        if self._polygons is not None:
            height, width = self._size
            return polygons_to_rle(self._polygons, height, width)
        return encode_rle(self.decode())

    def area(self) -> int:
        """Foreground pixel count (from the RLE when stored as one: no full decode)."""
        if self._rle is not None or self._polygons is not None:
            return rle_area(self.to_rle())
        return int(self.decode().sum())

    def bbox(self) -> tuple[float, float, float, float]:
        """COCO box (x, y, w, h) of the foreground; zeros when empty."""
        return rle_bbox(self.to_rle())

    def __repr__(self) -> str:
        stored = "rle" if self._rle is not None else "polygons" if self._polygons is not None else (
            "array" if self._array is not None else "loader"
        )
        return f"LazyMask({stored}, size={self._size})"


@dataclass
class SegSample:
    """One referring-segmentation example: an image, an expression, and the mask it refers to."""

    id: str
    """Unique within its source, stable across runs (e.g. ``refcoco:unc:train:ref42:sent7``)."""
    image: ImageRef
    """The image the expression refers into."""
    expression: str
    """The referring expression or class name (``the red triangle``, ``zebra on the left``, ``wall``)."""
    mask: LazyMask
    """Ground truth: union of the masks of every object the expression refers to, (H, W) bool."""
    source: str
    """Dataset name (``refcoco``, ``reasonseg``, ``ade20k``, ``shapes``, ...)."""
    split: str | None = None
    """Published split (``train``, ``val``, ``testA``, ...) when the format has one."""
    ignore_mask: LazyMask | None = None
    """Pixels excluded from scoring (ReasonSeg ``ignore`` polygons); None when the format has none."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Format-specific fields kept for analysis (``is_sentence``, category, annotation ids, scene graph)."""


@dataclass
class VQASample:
    """One question-answer example (Stage 2 training, RL prompts, benchmarks)."""

    id: str
    """Unique within its source, stable across runs."""
    image: ImageRef
    """The image the question is about (the first one when a record has several)."""
    question: str
    """The question text, without the options of a multiple-choice question."""
    answer: str
    """The exact ground-truth answer: option text for multiple choice, a word, a number or an expression."""
    source: str
    """Dataset name (``visualcot``, ``virl39k``, ``shapes-vqa``, ...)."""
    options: list[str] = field(default_factory=list)
    """Multiple-choice options in letter order (A, B, ...); empty for free-text questions."""
    answer_letter: str | None = None
    """Letter of the correct option (``"B"``) for multiple choice; None for free text."""
    answer_type: str = "text"
    """How to check an answer: ``choice`` (compare letters/options), ``text`` (a word or phrase),
    ``number`` (numeric), ``math`` (an expression, e.g. ViRL39K's boxed answers)."""
    region_masks: list[LazyMask] = field(default_factory=list)
    """Masks of the region(s) that answer the question. Analysis and the bbox baseline only:
    Stage 2 never trains on them."""
    region_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    """Boxes (x0, y0, x1, y1) in pixels of the answering region(s) (VisualCoT's ``bboxs``); not supervision."""
    extra_images: list[ImageRef] = field(default_factory=list)
    """Further images of a multi-image record (ViRL39K), in order."""
    split: str | None = None
    """Published split when the format has one."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Format-specific fields (category, pass rates, raw answer, scene graph)."""

    def region(self) -> np.ndarray | None:
        """The bool ``(H, W)`` union of ``region_masks``; None when the question has none."""
        if not self.region_masks:
            return None
        return np.logical_or.reduce([m.decode().astype(bool) for m in self.region_masks])


Sample = SegSample | VQASample

#: Letters for multiple-choice options.
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
