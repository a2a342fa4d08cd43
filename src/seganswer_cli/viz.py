"""Pictures of what the model did: mask overlays and the segmented second look, side by side;
contact sheets of many answered questions (``seganswer eval sheet``); training curves."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from seganswer_cli.errors import OutputError

#: Extension -> Pillow format of the figures seganswer writes (``save_image``; checked by the CLI
#: when it parses an output option).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF", ".gif": "GIF", ".pdf": "PDF"}
#: The lossless ones, for masks (a JPEG or WebP mask would not be 0/255 at its edge).
MASK_FORMATS = {k: v for k, v in IMAGE_FORMATS.items() if v in ("PNG", "BMP", "TIFF")}


def save_image(image: Image.Image, path) -> Path:
    """Write ``image`` to ``path`` in the format its extension names (``IMAGE_FORMATS``), creating
    its folder. The file is written beside ``path`` and renamed over it once complete, so a failed
    write (no space, no permission) leaves neither half a file nor a destroyed earlier one; it
    raises ``OutputError`` naming the path."""
    path = Path(path)
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"cannot write {path}: unknown image extension {path.suffix!r} "
                          f"(known: {', '.join(IMAGE_FORMATS)})")
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(partial, format=fmt)
        os.replace(partial, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    return path

#: Outline colours per mask (RGB), cycled.
MASK_COLOURS = ((255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 40))
#: How far pixels outside every mask are faded toward ``_FADE_GREY`` (0: not at all, 1: flat grey).
OUTSIDE_FADE = 0.6
_FADE_GREY = np.array((128, 128, 128), dtype=np.float32)


def _ring(mask: np.ndarray) -> np.ndarray:
    """Pixels outside ``mask`` with a 4-neighbour inside it: a one-pixel ring just around the mask."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown & ~mask


def outline(base: np.ndarray, mask: np.ndarray, colour) -> None:
    """Draw ``mask``'s outline on ``base`` (H, W, 3 float) in place, outside the mask so that none of
    its pixels change: rings in ``colour`` with a dark ring around them, visible on any background;
    one colour ring per 300 pixels of the image's long side, so it survives the figure's downscale."""
    width = max(1, round(max(mask.shape) / 300))
    grown, inner = mask.copy(), np.zeros_like(mask)
    for _ in range(width):
        ring = _ring(grown)
        inner |= ring
        grown |= ring
    base[_ring(grown)] = (20, 20, 20)
    base[inner] = colour


def overlay_mask(image: Image.Image, mask: np.ndarray, colour=(255, 64, 64),
                 box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """``image`` with ``mask`` shown without changing it: the pixels under the mask keep their exact
    colours (the region's colour is what many questions are about), the rest of the image is faded
    toward grey, and the mask is outlined in ``colour`` just outside its edge; ``box`` (x0, y0, x1,
    y1) is drawn if given."""
    return overlay_masks(image, [(mask, colour, box)])


def overlay_masks(image: Image.Image, masks: list[tuple[np.ndarray, tuple, tuple | None]]) -> Image.Image:
    """``overlay_mask`` for several ``(mask, colour, box)`` at once: outside their union faded once,
    each outlined in its colour."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    union = np.zeros(base.shape[:2], dtype=bool)
    for mask, _, _ in masks:
        union |= np.asarray(mask, dtype=bool)
    if union.any():
        base[~union] = (1 - OUTSIDE_FADE) * base[~union] + OUTSIDE_FADE * _FADE_GREY
    for mask, colour, _ in masks:
        outline(base, np.asarray(mask, dtype=bool), colour)
    out = Image.fromarray(base.clip(0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for _, colour, box in masks:
        if box is not None:
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=colour, width=2)
    return out


def kept_cells_view(view) -> Image.Image:
    """The segmented view as encoded, with the cells that were dropped (not fed to the model) dimmed."""
    img = np.asarray(view.segmented_image, dtype=np.float32).copy()
    rows, cols = view.overlap.shape
    cell_h, cell_w = img.shape[0] // rows, img.shape[1] // cols
    kept = np.zeros(rows * cols, dtype=bool)
    kept[view.keep.numpy()] = True
    for idx in np.flatnonzero(~kept):
        r, c = divmod(int(idx), cols)
        img[r * cell_h : (r + 1) * cell_h, c * cell_w : (c + 1) * cell_w] *= 0.25
    return Image.fromarray(img.astype(np.uint8))


def side_by_side(panels: list[Image.Image], captions: list[str], height: int = 384) -> Image.Image:
    """Panels scaled to one height, left to right, each with a caption strip above it."""
    strip = 18
    scaled = []
    for p in panels:
        w = max(1, round(p.width * height / p.height))
        scaled.append(p.convert("RGB").resize((w, height), Image.Resampling.NEAREST))
    total_w = sum(p.width for p in scaled) + 8 * (len(scaled) - 1)
    canvas = Image.new("RGB", (total_w, height + strip), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for p, caption in zip(scaled, captions):
        canvas.paste(p, (x, strip))
        draw.text((x + 2, 3), caption, fill=(0, 0, 0))
        x += p.width + 8
    return canvas


def overlay_steps(image: Image.Image, steps, *, max_side: int | None = None) -> Image.Image:
    """``image`` with every ``<|seg|>`` step's mask and box (``reasoning.SegStep``), one colour per step.

    ``max_side`` shrinks the image first (masks nearest-neighbour, boxes scaled), so outlines stay
    one display pixel wide on a small tile instead of vanishing in the downscale.
    """
    out = image.convert("RGB")
    scale = 1.0 if max_side is None else min(1.0, max_side / max(out.size))
    if scale < 1.0:
        out = out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))),
                         Image.Resampling.LANCZOS)
    layers = []
    for i, step in enumerate(steps):
        if step.mask is None:
            continue
        mask = np.asarray(step.mask, dtype=bool)
        box = step.box
        if scale < 1.0:
            mask = np.asarray(Image.fromarray(mask).resize(out.size, Image.Resampling.NEAREST))
            box = None if box is None else tuple(round(v * scale) for v in box)
        layers.append((mask, MASK_COLOURS[i % len(MASK_COLOURS)], box))
    return overlay_masks(out, layers) if layers else out


def trajectory_figure(image: Image.Image, traj) -> Image.Image:
    """The original image with every step's mask, then each step's segmented view, and the answer."""
    overlaid = overlay_steps(image, traj.steps)
    panels, captions = [], []
    answer = traj.answer if traj.answer is not None else "(no answer)"
    panels.append(overlaid)
    captions.append(f"answer: {answer}"[:80])
    for i, step in enumerate(traj.steps):
        if step.view is not None:
            panels.append(kept_cells_view(step.view))
            note = f" ({step.fallback})" if step.fallback else ""
            captions.append(f"look {i + 1}: {step.kept_tokens} tokens{note}")
    return side_by_side(panels, captions)


def segmentation_figure(image: Image.Image, mask: np.ndarray, expression: str) -> Image.Image:
    return side_by_side([image, overlay_mask(image, mask)], ["image", expression[:60]])


# -- contact sheets ------------------------------------------------------------------------------

#: Side of the square box each tile panel (image + mask, second look) is fitted into.
TILE_PANEL = 256
_PAD, _HEADER, _STRIP, _LINE, _TEXT_LINES, _BORDER = 6, 16, 18, 13, 4, 3
#: (width, height) of one contact-sheet tile: two panels side by side, a header, four lines of text.
TILE_SIZE = (2 * TILE_PANEL + 8 + 2 * _PAD, _PAD + _HEADER + TILE_PANEL + _STRIP + _TEXT_LINES * _LINE + _PAD)
#: Space around and between tiles; height of the column titles of a comparison sheet.
SHEET_GAP, SHEET_TITLE = 8, 20
RIGHT_COLOUR, WRONG_COLOUR, PANEL_GREY = (30, 150, 60), (210, 40, 40), (236, 236, 236)


@dataclass
class TrajectoryTile:
    """One answered question as a contact sheet shows it."""

    image: Image.Image
    """The question's image, as the model got it."""
    steps: list
    """The ``<|seg|>`` steps (``reasoning.SegStep``: mask, box, ...), drawn over the image."""
    second_look: Image.Image | None
    """What the model saw in its second turn (``kept_cells_view``); None when it did not look again."""
    look_caption: str
    """Caption of the second-look panel (tokens kept, fallback, or why there is none)."""
    title: str
    """Header: which run and item."""
    question: str
    gold: str
    answer: str
    correct: bool


def fit_into(image: Image.Image, side: int, *, resample=Image.Resampling.NEAREST) -> Image.Image:
    """``image`` scaled to fit a ``side`` x ``side`` square (aspect kept), centred on light grey."""
    scale = side / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    box = Image.new("RGB", (side, side), PANEL_GREY)
    box.paste(image.convert("RGB").resize((w, h), resample), ((side - w) // 2, (side - h) // 2))
    return box


def wrap_text(draw: ImageDraw.ImageDraw, text: str, width: int, max_lines: int) -> list[str]:
    """``text`` broken into lines of at most ``width`` pixels, cut with ``...`` after ``max_lines``."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while len(line) > 1 and draw.textlength(line) > width:  # one very long word: cut it
            words.insert(0, line[len(line) // 2 :])
            line = line[: len(line) // 2]
        while words and draw.textlength(f"{line} {words[0]}") <= width:
            line += " " + words.pop(0)
        lines.append(line)
    if words and lines:
        last = lines[-1]
        while last and draw.textlength(last + " ...") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + " ..."
    return lines


def _blank_panel(text: str) -> Image.Image:
    panel = Image.new("RGB", (TILE_PANEL, TILE_PANEL), PANEL_GREY)
    draw = ImageDraw.Draw(panel)
    for i, line in enumerate(wrap_text(draw, text, TILE_PANEL - 20, 4)):
        draw.text((10, TILE_PANEL // 2 - 20 + i * _LINE), line, fill=(110, 110, 110))
    return panel


def trajectory_tile(tile: TrajectoryTile) -> Image.Image:
    """One tile of ``TILE_SIZE``: a header (run, item, RIGHT/WRONG), the image with the masks beside the
    second look, then the question, the gold answer and the model's; framed green (right) or red (wrong)."""
    colour = RIGHT_COLOUR if tile.correct else WRONG_COLOUR
    image = fit_into(overlay_steps(tile.image, tile.steps, max_side=TILE_PANEL), TILE_PANEL)
    look = (fit_into(tile.second_look, TILE_PANEL) if tile.second_look is not None
            else _blank_panel(tile.look_caption))
    first = "image + mask" if any(step.mask is not None for step in tile.steps) else "image"
    caption = tile.look_caption[:48] if tile.second_look is not None else "second look"
    panels = side_by_side([image, look], [first, caption], height=TILE_PANEL)

    out = Image.new("RGB", TILE_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(out)
    width = TILE_SIZE[0] - 2 * _PAD
    mark = "RIGHT" if tile.correct else "WRONG"
    draw.text((_PAD, _PAD), "".join(wrap_text(draw, tile.title, width - 50, 1)), fill=(0, 0, 0))
    draw.text((TILE_SIZE[0] - _PAD - draw.textlength(mark), _PAD), mark, fill=colour)
    out.paste(panels, (_PAD, _PAD + _HEADER))
    y = _PAD + _HEADER + panels.height
    lines = [(line, (0, 0, 0)) for line in wrap_text(draw, f"Q: {tile.question}", width, _TEXT_LINES - 2)]
    lines += [(line, (0, 0, 0)) for line in wrap_text(draw, f"gold: {tile.gold}", width, 1)]
    lines += [(line, colour) for line in wrap_text(draw, f"model: {tile.answer}", width, 1)]
    for i, (line, fill) in enumerate(lines):
        draw.text((_PAD, y + i * _LINE), line, fill=fill)
    draw.rectangle([0, 0, TILE_SIZE[0] - 1, TILE_SIZE[1] - 1], outline=colour, width=_BORDER)
    return out


def contact_sheet(rows: list[list[TrajectoryTile | None]], column_titles: list[str] | None = None) -> Image.Image:
    """Tiles in rows (``None``: an empty cell, e.g. a question a run did not evaluate), under optional
    column titles. Every tile is ``TILE_SIZE``; ``SHEET_GAP`` pixels around and between them."""
    columns = max([len(row) for row in rows] + [len(column_titles or [])] + [1])
    tile_w, tile_h = TILE_SIZE
    top = SHEET_TITLE if column_titles else 0
    sheet = Image.new("RGB", (columns * tile_w + (columns + 1) * SHEET_GAP,
                              top + len(rows) * tile_h + (len(rows) + 1) * SHEET_GAP), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(column_titles or []):
        x = SHEET_GAP + c * (tile_w + SHEET_GAP)
        draw.text((x + 2, SHEET_GAP + 2), "".join(wrap_text(draw, title, tile_w - 4, 1)), fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            x, y = SHEET_GAP + c * (tile_w + SHEET_GAP), top + SHEET_GAP + r * (tile_h + SHEET_GAP)
            if tile is None:
                draw.rectangle([x, y, x + tile_w - 1, y + tile_h - 1], fill=PANEL_GREY)
                draw.text((x + 10, y + tile_h // 2), "not evaluated in this run", fill=(110, 110, 110))
            else:
                sheet.paste(trajectory_tile(tile), (x, y))
    return sheet


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` points (the smoothed line of a training curve).

    >>> moving_average([0, 2, 4, 6], 2)
    [0.0, 1.0, 3.0, 5.0]
    """
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def curve_panel(xs: list[float], ys: list[float], title: str, colour=(40, 90, 225), *, window: int = 5,
                size: tuple[int, int] = (360, 220)) -> Image.Image:
    """One training curve in the style of the paper's Figure 4: the raw values thin and pale, their
    moving average thick; the axes carry the first/last step and the value range."""
    w, h = size
    left, right, top, bottom = 46, 10, 22, 24
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((left, 4), title, fill=(0, 0, 0))
    draw.rectangle([left, top, w - right, h - bottom], outline=(160, 160, 160))
    if not xs:
        draw.text((left + 8, top + 8), "no data", fill=(120, 120, 120))
        return img
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def at(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - lo) / (hi - lo) * (h - top - bottom))

    pale = tuple(int(c + (255 - c) * 0.65) for c in colour)
    raw = [at(x, y) for x, y in zip(xs, ys)]
    smooth = [at(x, y) for x, y in zip(xs, moving_average(ys, window))]
    if len(raw) > 1:
        draw.line(raw, fill=pale, width=1)
        draw.line(smooth, fill=colour, width=3)
    else:
        draw.ellipse([raw[0][0] - 2, raw[0][1] - 2, raw[0][0] + 2, raw[0][1] + 2], fill=colour)
    draw.text((2, top - 2), f"{hi:.3g}", fill=(80, 80, 80))
    draw.text((2, h - bottom - 10), f"{lo:.3g}", fill=(80, 80, 80))
    draw.text((left, h - bottom + 4), f"{x0:g}", fill=(80, 80, 80))
    draw.text((w - right - 40, h - bottom + 4), f"step {x1:g}", fill=(80, 80, 80))
    return img


def curves_figure(panels: list[Image.Image], columns: int = 3) -> Image.Image:
    """Panels in a grid, left to right, top to bottom."""
    columns = max(1, min(columns, len(panels)))
    rows = (len(panels) + columns - 1) // columns
    pw, ph = panels[0].size
    canvas = Image.new("RGB", (columns * pw, rows * ph), (255, 255, 255))
    for i, p in enumerate(panels):
        canvas.paste(p, ((i % columns) * pw, (i // columns) * ph))
    return canvas
