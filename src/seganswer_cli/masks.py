"""Binary masks as COCO run-length encodings (RLE), on top of pycocotools.

One implementation shared by the data readers, evaluation and ``seganswer infer --json``.
A mask is a ``bool`` numpy array of shape (H, W); its JSON form is the COCO compressed RLE
``{"size": [H, W], "counts": "<str>"}``. No torch here, so the CLI can import it cheaply.

Malformed input raises ``ValueError`` with a short reason; readers add the file and record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

#: A COCO RLE as stored in JSON: {"size": [H, W], "counts": str}.
RLE = dict[str, Any]


def encode_rle(mask: np.ndarray) -> RLE:
    """Encode a (H, W) boolean mask as a JSON-able COCO RLE with ``counts`` as ``str``.

    >>> encode_rle(np.array([[0, 1], [1, 1]], dtype=bool))
    {'size': [2, 2], 'counts': '13'}
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    # pycocotools wants column-major uint8 (H, W)
    rle = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _to_coco_rle(rle: RLE) -> dict:
    """A pycocotools-ready compressed RLE (counts as bytes) from any COCO RLE form."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("an RLE must be a dict with 'size' and 'counts'")
    size = rle["size"]
    if len(size) != 2 or int(size[0]) < 0 or int(size[1]) < 0:
        raise ValueError(f"RLE size must be [H, W], got {size!r}")
    height, width = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, list | tuple):
        # uncompressed RLE (COCO crowd annotations): run lengths must cover H * W pixels
        if sum(int(c) for c in counts) != height * width:
            raise ValueError(f"uncompressed RLE runs sum to {sum(counts)}, expected {height * width} (H*W)")
        return coco_mask.frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise ValueError(f"RLE counts must be str, bytes or a list of ints, got {type(counts).__name__}")
    return {"size": [height, width], "counts": counts}


def decode_rle(rle: RLE) -> np.ndarray:
    """Decode a COCO RLE (compressed ``str``/``bytes`` counts, or uncompressed list) to a (H, W) bool array."""
    coco = _to_coco_rle(rle)
    try:
        return coco_mask.decode(coco).astype(bool)
    except Exception as e:  # pycocotools raises bare errors on corrupt counts
        raise ValueError(f"corrupt RLE counts: {e}") from None


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels, without decoding."""
    return int(coco_mask.area(_to_coco_rle(rle)))


def rle_bbox(rle: RLE) -> tuple[float, float, float, float]:
    """COCO box ``(x, y, w, h)`` of the foreground, without decoding; all zeros when empty."""
    x, y, w, h = coco_mask.toBbox(_to_coco_rle(rle)).tolist()
    return (x, y, w, h)


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """COCO box ``(x, y, w, h)`` in whole pixels of a (H, W) bool mask; ``(0, 0, 0, 0)`` when empty.

    >>> m = np.zeros((4, 5), dtype=bool); m[1:3, 2:5] = True
    >>> mask_bbox(m)
    (2, 1, 3, 2)
    """
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def check_polygons_inside(
    polygons: Sequence[Sequence[float]], height: int, width: int, *, tolerance: float = 1.0
) -> None:
    """Raise ``ValueError`` if a polygon is malformed or has a vertex outside the image.

    Polygons are COCO style: flat ``[x0, y0, x1, y1, ...]`` lists in pixel coordinates. Vertices may
    sit up to ``tolerance`` pixels outside (annotation tools snap to the outer pixel edge); further
    out means the annotation belongs to another image size, which pycocotools would silently clip.
    """
    for index, polygon in enumerate(polygons):
        if not isinstance(polygon, Sequence) or isinstance(polygon, str | bytes):
            raise ValueError(f"polygon {index} is not a list of coordinates")
        if len(polygon) < 6 or len(polygon) % 2:
            raise ValueError(f"polygon {index} needs an even number (>= 6) of coordinates, got {len(polygon)}")
        xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)  # (n_vertices, 2)
        if not np.isfinite(xy).all():
            raise ValueError(f"polygon {index} has a non-finite coordinate")
        outside = (
            (xy[:, 0] < -tolerance)
            | (xy[:, 0] > width + tolerance)
            | (xy[:, 1] < -tolerance)
            | (xy[:, 1] > height + tolerance)
        )
        if outside.any():
            x, y = xy[np.argmax(outside)]
            raise ValueError(f"polygon {index} has vertex ({x:g}, {y:g}) outside the {width}x{height} image")


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> RLE:
    """Rasterize COCO polygons (flat ``[x0, y0, x1, y1, ...]`` lists) to one merged RLE (their union).

    Checks every vertex lies inside the image first (see ``check_polygons_inside``).
    """
    check_polygons_inside(polygons, height, width)
    parts = coco_mask.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
    merged = coco_mask.merge(parts, intersect=False)
    return {"size": [height, width], "counts": merged["counts"].decode("ascii")}


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterize COCO polygons to a (H, W) bool mask (their union)."""
    return decode_rle(polygons_to_rle(polygons, height, width))


def segmentation_to_rle(segmentation: Any, height: int, width: int) -> RLE:
    """One merged RLE from a COCO ``annotation["segmentation"]`` in any of its published forms.

    Accepted: a list of polygons (RefCOCO/COCO), an RLE dict with compressed or uncompressed counts
    (COCO crowd), or a list of RLE dicts (RefClef). The RLE size must equal (height, width).
    """
    if isinstance(segmentation, dict):
        parts = [segmentation]
    elif isinstance(segmentation, list | tuple) and segmentation and isinstance(segmentation[0], dict):
        parts = list(segmentation)
    elif isinstance(segmentation, list | tuple) and segmentation:
        return polygons_to_rle(segmentation, height, width)
    else:
        raise ValueError("segmentation is empty or neither polygons nor RLE")
    coco_parts = []
    for part in parts:
        coco = _to_coco_rle(part)
        if [int(s) for s in coco["size"]] != [height, width]:
            raise ValueError(f"RLE size {list(coco['size'])} does not match the image size [{height}, {width}]")
        coco_parts.append(coco)
    merged = coco_mask.merge(coco_parts, intersect=False) if len(coco_parts) > 1 else coco_parts[0]
    counts = merged["counts"]
    return {"size": [height, width], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
