"""What ``seganswer data inspect`` reports: counts, fields, examples, checks and a contact sheet."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from seganswer_cli.data.formats import Dataset
from seganswer_cli.data.onerror import RecordErrors
from seganswer_cli.data.samples import LazyMask, SegSample, VQASample
from seganswer_cli.errors import DataError
from seganswer_cli.viz import overlay_mask, save_image

#: Contact sheet: brightness kept outside the masks, and the colour of VisualCoT-style boxes.
MASK_COLOUR = (255, 0, 255)


def check_sample(sample: SegSample | VQASample) -> None:
    """Decode the image and every mask; raise if the image fails or a mask's size differs from it."""
    image = sample.image.load()
    width, height = image.size
    masks: list[tuple[str, LazyMask]] = []
    if isinstance(sample, SegSample):
        masks.append(("mask", sample.mask))
        if sample.ignore_mask is not None:
            masks.append(("ignore_mask", sample.ignore_mask))
    else:
        masks += [(f"region_masks[{i}]", m) for i, m in enumerate(sample.region_masks)]
    for name, mask in masks:
        array = mask.decode()
        if array.shape != (height, width):
            raise DataError(f"{name} is {array.shape[1]}x{array.shape[0]} but the image is {width}x{height}")


def summarize(dataset: Dataset, *, limit: int | None = None, examples: int = 5, check: bool = False,
              ) -> tuple[dict[str, Any], list[SegSample | VQASample]]:
    """Read ``dataset`` (up to ``limit`` samples) and describe it as a JSON-able dict.

    With ``check`` every image and mask is decoded (``check_sample``) and failures go through the
    dataset's ``on_error`` policy, so an undecodable image is reported with its record.
    Returns the summary and the first ``examples`` samples (for a contact sheet).
    """
    count, kinds, sources, splits = 0, Counter(), Counter(), Counter()
    shown: list[SegSample | VQASample] = []
    checks = RecordErrors(dataset.on_error)
    for sample in dataset:
        if limit is not None and count >= limit:
            break
        if check:
            passed = checks.attempt(sample.image.describe(), sample.id,
                                    lambda sample=sample: check_sample(sample) or True)
            if passed is None:  # skipped (on_error="skip"); counted in checks.skipped
                continue
        count += 1
        kinds["seg" if isinstance(sample, SegSample) else "vqa"] += 1
        sources[sample.source] += 1
        splits[sample.split or "-"] += 1
        if len(shown) < examples:
            shown.append(sample)
    skipped = dataset.errors.skipped + checks.skipped
    summary = {
        "path": str(dataset.path),
        "format": dataset.format,
        "count": count,
        "limited": limit is not None and count >= limit,
        "kinds": dict(kinds),
        "sources": dict(sources),
        "splits": dict(splits),
        "fields": _fields(shown[0]) if shown else [],
        "skipped": len(skipped),
        "skipped_records": [{"file": s.file, "record": s.record, "reason": s.reason} for s in skipped[:50]],
        "examples": [describe_sample(s) for s in shown],
    }
    return summary, shown


def _fields(sample: SegSample | VQASample) -> list[str]:
    return [f.name for f in fields(sample)]


def describe_sample(sample: SegSample | VQASample) -> dict[str, Any]:
    """A short JSON-able view of one sample (no pixels)."""
    out: dict[str, Any] = {"id": sample.id, "image": sample.image.describe(), "source": sample.source,
                           "split": sample.split}
    if isinstance(sample, SegSample):
        out["expression"] = sample.expression
        out["mask_area"] = sample.mask.area()
        out["mask_size"] = list(sample.mask.size) if sample.mask.size else None
    else:
        out.update(question=sample.question, answer=sample.answer, answer_type=sample.answer_type,
                   options=sample.options, answer_letter=sample.answer_letter,
                   region_masks=len(sample.region_masks), region_boxes=[list(b) for b in sample.region_boxes])
    return out


def contact_sheet(samples: Sequence[SegSample | VQASample], out: Path, *, tile: int = 256,
                  columns: int | None = None) -> Path:
    """Write an image (its type from the extension of ``out``: ``viz.save_image``) with a grid of the
    samples' images, their masks overlaid and their text below."""
    if not samples:
        raise DataError("no samples to draw on a contact sheet")
    columns = columns or min(len(samples), 4)
    rows = math.ceil(len(samples) / columns)
    caption = 36
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, sample in enumerate(samples):
        picture = sample.image.load()
        image = np.asarray(picture)  # (H, W, 3)
        masks = [sample.mask] if isinstance(sample, SegSample) else list(sample.region_masks)
        region = np.zeros(image.shape[:2], dtype=bool)  # (H, W) union of the sample's masks
        for mask in masks:
            m = mask.decode()
            if m.shape == region.shape:
                region |= m
        # the region's own pixels unchanged (its colour is often what a question asks), the rest faded
        thumb = overlay_mask(picture, region, MASK_COLOUR)
        scale = min(tile / thumb.width, tile / thumb.height)
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                             Image.Resampling.NEAREST)
        x, y = (i % columns) * tile, (i // columns) * (tile + caption)
        sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        if isinstance(sample, VQASample):
            for box in sample.region_boxes:
                scale = thumb.width / image.shape[1]
                ox, oy = x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2
                draw.rectangle([ox + box[0] * scale, oy + box[1] * scale, ox + box[2] * scale, oy + box[3] * scale],
                               outline=MASK_COLOUR, width=2)
        text = sample.expression if isinstance(sample, SegSample) else f"{sample.question} -> {sample.answer}"
        chars = max(8, tile // 6)
        draw.text((x + 4, y + tile + 2), text[:chars], fill=(0, 0, 0))
        draw.text((x + 4, y + tile + 18), text[chars:2 * chars], fill=(0, 0, 0))
    return save_image(sheet, out)
