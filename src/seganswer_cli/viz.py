"""Pictures of what the model did: mask overlays and the segmented second look, side by side."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

#: Overlay colours per mask (RGB), cycled.
MASK_COLOURS = ((255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 40))


def overlay_mask(image: Image.Image, mask: np.ndarray, colour=(255, 64, 64), alpha: float = 0.45,
                 box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """``image`` with ``mask`` tinted in ``colour``, its outline drawn, and ``box`` (x0, y0, x1, y1) if given."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    m = np.asarray(mask, dtype=bool)
    tint = np.array(colour, dtype=np.float32)
    base[m] = (1 - alpha) * base[m] + alpha * tint
    # Outline: mask pixels with a background 4-neighbour.
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    base[edge] = tint
    out = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    if box is not None:
        ImageDraw.Draw(out).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=colour, width=2)
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


def trajectory_figure(image: Image.Image, traj) -> Image.Image:
    """The original image with every step's mask, then each step's segmented view, and the answer."""
    overlaid = image.convert("RGB")
    panels, captions = [], []
    for i, step in enumerate(traj.steps):
        if step.mask is not None:
            overlaid = overlay_mask(overlaid, step.mask, MASK_COLOURS[i % len(MASK_COLOURS)], box=step.box)
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
