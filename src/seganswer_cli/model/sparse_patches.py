"""The sparse-position patch encoder: the segmented region as a turn of sparse image tokens.

Qwen2.5-VL cuts an image into 14-px patches and merges 2x2 patches into one LLM token, so each
LLM token covers a 28x28-px *cell* of the resized image and carries a 3-D M-RoPE position
``(t, h, w)`` = ``(base, base + row, base + col)``, ``base`` being the image's first position.

Given the original image and a mask, ``build_segmented_view`` makes the second look of SegAnswer:

- **zoom**: the cells covering the mask's bounding box (on the global view's grid) are cut out of
  the *native* image and re-encoded at up to a pixel budget, so the region is seen at finer detail
  than in the global view;
- **background removal**: pixels outside the mask are painted with a flat colour before encoding,
  so kept tokens do not carry the clutter around the object;
- **sparsity**: only the cells whose native footprint the mask covers by more than
  ``min_overlap`` (a fraction; 0 = any pixel) are kept; the other tokens are dropped;
- **positions**: each kept token is placed where its cell's centre lies *in the original image's
  grid*: ``h = row_center_in_global_grid``, ``w = col_center_in_global_grid``, relative to the
  original image's base offset (the caller adds the base). Without zoom these are the integer grid
  coordinates of the original image; with zoom they are real-valued (RoPE takes real positions).

With a full mask, no zoom and nothing dropped, the view's pixels, token count and positions are
exactly those of the plain image (tested against transformers' ``get_rope_index``).

Modes: ``mask`` (the above), ``bbox`` (DeepEyes-style box crop of the same region at the same
resolution: background kept, every cell kept, fresh positions like a new image) and ``none``
(no second look; ``build_segmented_view`` returns ``None``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from seganswer_cli.errors import EmptyMaskError, MaskShapeError
from seganswer_cli.model.presets import CROP_MODES

RoiMode = Literal["mask", "bbox", "none"]
ROI_MODES: tuple[str, ...] = ("mask", "bbox", "none")
CropMode = Literal["cells", "box"]


@dataclass
class DenseImage:
    """One image as the MLLM sees it: all cells, positions laid out by ``get_rope_index``'s rule."""

    pixel_values: torch.Tensor
    """``(grid_t * grid_h * grid_w, C * temporal_patch * patch * patch)`` patch rows, as the processor makes them."""
    grid_thw: torch.Tensor
    """``(3,)`` long: temporal, height, width of the *patch* grid (before the 2x2 merge)."""
    native_size: tuple[int, int]
    """``(H, W)`` of the image before resizing."""
    merge_size: int = 2

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of merged cells: one LLM token per cell."""
        return int(self.grid_thw[1]) // self.merge_size, int(self.grid_thw[2]) // self.merge_size

    @property
    def num_tokens(self) -> int:
        rows, cols = self.grid
        return int(self.grid_thw[0]) * rows * cols

    def relative_positions(self) -> torch.Tensor:
        """``(3, N)`` float positions relative to the image's base, row-major over merged cells."""
        rows, cols = self.grid
        t = int(self.grid_thw[0])
        tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(rows), torch.arange(cols), indexing="ij")
        return torch.stack([tt.flatten(), hh.flatten(), ww.flatten()]).float()  # (3, N)

    @property
    def position_extent(self) -> int:
        """How far the next text position moves past the base (as in ``get_rope_index``)."""
        return max(self.grid)


@dataclass
class SegmentedView:
    """The second look: the encoded crop, which of its cells are kept, and where they sit."""

    mode: str
    """``mask`` or ``bbox``."""
    crop: DenseImage
    """The encoded crop (all of its cells; ``keep`` selects the tokens that enter the sequence)."""
    keep: torch.Tensor
    """``(K,)`` long: indices of kept cells in the crop's row-major merged grid."""
    positions: torch.Tensor | None
    """``(3, K)`` float positions relative to the *original* image's base (mode ``mask``);
    ``None`` for ``bbox``, whose tokens get fresh positions like a new image."""
    crop_box: tuple[int, int, int, int]
    """``(x0, y0, x1, y1)`` of the crop in native pixels of the original image (x1, y1 exclusive)."""
    cell_box: tuple[int, int, int, int]
    """``(row0, col0, row1, col1)`` of the crop on the original image's merged grid (exclusive ends)."""
    segmented_image: Image.Image
    """The crop as encoded (resized, background painted), for visualisation."""
    overlap: torch.Tensor
    """``(rows, cols)`` fraction of each crop cell's native footprint covered by the mask."""

    @property
    def num_tokens(self) -> int:
        return int(self.keep.numel())


def global_view(image: Image.Image, image_processor) -> DenseImage:
    """Encode the whole image exactly as the processor does (its own resize and normalisation)."""
    return global_views([image], image_processor)[0]


def global_views(images: list[Image.Image], image_processor) -> list[DenseImage]:
    """``global_view`` of each image from one processor call (it resizes and normalises images of one
    size together: the same values as one call per image, in less time)."""
    if not images:
        return []
    out = image_processor(images=list(images), return_tensors="pt")
    grids = out["image_grid_thw"]  # (n, 3)
    pixels = out["pixel_values"].split(grids.prod(-1).tolist())  # rows of each image, in order
    return [DenseImage(pixel_values=p, grid_thw=g, native_size=(image.height, image.width),
                       merge_size=image_processor.merge_size) for image, p, g in zip(images, pixels, grids)]


def keep_cells(overlap: torch.Tensor, min_overlap: float = 0.0) -> torch.Tensor:
    """Boolean ``(rows, cols)``: cells whose mask coverage is above ``min_overlap`` (0 = any pixel)."""
    if not 0.0 <= min_overlap < 1.0:
        raise ValueError(f"min_overlap must be in [0, 1), got {min_overlap}")
    return overlap > min_overlap


def cell_coverage(mask: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Fraction of each of ``rows x cols`` equal cells of ``mask`` (native pixels) that is foreground.

    ``adaptive_avg_pool2d`` gives exactly the coverage for integer ratios and the coverage of the
    cell's enclosing native pixels otherwise, so a cell that touches any mask pixel scores > 0.
    """
    return F.adaptive_avg_pool2d(mask[None, None].float(), (rows, cols))[0, 0]  # (rows, cols)


def _covering_cells(lo: int, hi: int, cells: int, size: int) -> tuple[int, int]:
    """First and last-plus-one of ``cells`` equal cells over ``size`` native pixels (cell r spans
    ``[r*size/cells, (r+1)*size/cells)``) that cover pixels ``[lo, hi)``; at least one cell."""
    first = math.floor(lo * cells / size)
    return first, max(first + 1, math.ceil(hi * cells / size))


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the foreground (exclusive ends); ``EmptyMaskError`` when there is none."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        raise EmptyMaskError("the mask is empty: there is no region to segment out")
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _as_bool_mask(mask, size: tuple[int, int]) -> np.ndarray:
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.shape != size:
        raise MaskShapeError(f"mask has shape {tuple(arr.shape)} but the image is {size[0]}x{size[1]} (H, W)")
    return arr.astype(bool)


def _resize_uint8(image: torch.Tensor, size: tuple[int, int], resample) -> torch.Tensor:
    """Resize a ``(3, H, W)`` uint8 image the way Qwen's torchvision image processor does."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as tvF
    from transformers.image_utils import pil_torch_interpolation_mapping

    interpolation = pil_torch_interpolation_mapping.get(resample, InterpolationMode.BICUBIC)
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return tvF.resize(image, list(size), interpolation=interpolation, antialias=True)


def zoom_size(
    crop_hw: tuple[int, int], min_size: tuple[int, int], *, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Pixel size the crop is encoded at: its native size, fitted to the budget like any Qwen image
    (``smart_resize``), and never coarser than the global view's cells (``min_size``)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(crop_hw[0], crop_hw[1], factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    if h * w < min_size[0] * min_size[1]:
        return min_size
    return h, w


def build_segmented_view(
    image: Image.Image,
    mask,
    image_processor,
    *,
    mode: RoiMode = "mask",
    zoom: bool = True,
    min_overlap: float = 0.0,
    zoom_min_pixels: int | None = None,
    zoom_max_pixels: int | None = None,
    background: tuple[int, int, int] = (0, 0, 0),
    crop: CropMode = "cells",
    crop_margin: float = 0.25,
) -> SegmentedView | None:
    """Build the segmented second look of ``image`` under ``mask`` (bool ``(H, W)``).

    ``zoom_min_pixels`` / ``zoom_max_pixels`` bound the crop's encoded size (default: the
    processor's own budget). ``crop`` picks the region that is zoomed: ``cells``, the global view's
    cells that cover the mask's bounding box; ``box``, the mask's bounding box grown by
    ``crop_margin`` of its longer side on every side (zoom only: without zoom the crop is always
    the global view's own cells). Raises ``EmptyMaskError`` for an empty mask (the reasoning loop then
    falls back to the original image) and ``MaskShapeError`` when the mask is not ``(H, W)``.
    """
    if mode not in ROI_MODES:
        raise ValueError(f"unknown roi mode {mode!r}; expected one of {', '.join(ROI_MODES)}")
    if mode == "none":
        return None
    if crop not in CROP_MODES:
        raise ValueError(f"unknown crop {crop!r}; expected one of {', '.join(CROP_MODES)}")
    H, W = image.height, image.width
    mask_np = _as_bool_mask(mask, (H, W))
    x0, y0, x1, y1 = mask_bbox(mask_np)

    patch = image_processor.patch_size
    merge = image_processor.merge_size
    factor = patch * merge  # 28 px: one LLM token
    size = image_processor.size
    min_pixels = zoom_min_pixels or size["shortest_edge"]
    max_pixels = zoom_max_pixels or size["longest_edge"]

    # The global view's merged grid, from the processor's own resize rule.
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    gh_px, gw_px = smart_resize(H, W, factor=factor, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    rows, cols = gh_px // factor, gw_px // factor

    # The box of global cells that covers the mask's bounding box.
    (r0, r1), (c0, c1) = _covering_cells(y0, y1, rows, H), _covering_cells(x0, x1, cols, W)
    # Native pixel box of those cells (rounded to whole pixels for cropping).
    ny0, ny1 = round(r0 * H / rows), round(r1 * H / rows)
    nx0, nx1 = round(c0 * W / cols), round(c1 * W / cols)
    no_zoom_hw = ((r1 - r0) * factor, (c1 - c0) * factor)
    if zoom and crop == "box":
        # The mask's own box with a margin: a small region fills the zoomed crop instead of
        # sitting in a corner of the (possibly much larger) global cells around it.
        pad = max(1, math.ceil(crop_margin * max(x1 - x0, y1 - y0)))
        nx0, ny0, nx1, ny1 = max(0, x0 - pad), max(0, y0 - pad), min(W, x1 + pad), min(H, y1 + pad)
        (r0, r1), (c0, c1) = _covering_cells(ny0, ny1, rows, H), _covering_cells(nx0, nx1, cols, W)
        # the box's size in the global view's pixels, in whole cells
        no_zoom_hw = (math.ceil((ny1 - ny0) * rows / H) * factor, math.ceil((nx1 - nx0) * cols / W) * factor)

    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)  # (3, H, W)
    resample = getattr(image_processor, "resample", None)
    if zoom:
        out_h, out_w = zoom_size((ny1 - ny0, nx1 - nx0), no_zoom_hw, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        pixels_crop = _resize_uint8(pixels[:, ny0:ny1, nx0:nx1], (out_h, out_w), resample)  # (3, out_h, out_w)
    else:
        # Cut the cells out of the global view itself, so they are pixel-identical to it.
        full = _resize_uint8(pixels, (gh_px, gw_px), resample)  # (3, gh_px, gw_px)
        pixels_crop = full[:, r0 * factor : r1 * factor, c0 * factor : c1 * factor]
        out_h, out_w = no_zoom_hw
    crop_rows, crop_cols = out_h // factor, out_w // factor

    mask_crop = torch.from_numpy(mask_np[ny0:ny1, nx0:nx1])  # (h, w) native
    overlap = cell_coverage(mask_crop, crop_rows, crop_cols)  # (crop_rows, crop_cols)
    if mode == "mask":
        keep_grid = keep_cells(overlap, min_overlap)
        if not keep_grid.any():
            raise EmptyMaskError(f"no cell is covered by more than {min_overlap:.0%} of the mask")
        # Paint the background so kept cells carry only the object's pixels.
        pixel_mask = F.interpolate(mask_crop[None, None].float(), size=(out_h, out_w), mode="nearest")[0, 0] > 0.5
        fill = torch.tensor(background, dtype=torch.uint8)[:, None, None]
        pixels_crop = torch.where(pixel_mask[None], pixels_crop, fill)
    else:
        keep_grid = torch.ones(crop_rows, crop_cols, dtype=torch.bool)

    encoded = image_processor(images=[pixels_crop], do_resize=False, return_tensors="pt")
    dense = DenseImage(
        pixel_values=encoded["pixel_values"],
        grid_thw=encoded["image_grid_thw"][0],
        native_size=(ny1 - ny0, nx1 - nx0),
        merge_size=merge,
    )
    keep = torch.nonzero(keep_grid.flatten(), as_tuple=False).flatten()  # (K,)

    positions = None
    if mode == "mask":
        # Cell (i, j) of the crop has its centre at native row ny0 + (i + 0.5) * (ny1 - ny0) / crop_rows;
        # in the global grid's units (cell centres at integers) that is row * rows / H - 0.5.
        i = (keep // crop_cols).double()
        j = (keep % crop_cols).double()
        h = (ny0 + (i + 0.5) * (ny1 - ny0) / crop_rows) * rows / H - 0.5
        w = (nx0 + (j + 0.5) * (nx1 - nx0) / crop_cols) * cols / W - 0.5
        if not zoom:  # exact grid coordinates; remove the rounding of the native box
            h, w = i + r0, j + c0
        positions = torch.stack([torch.zeros_like(h), h, w]).float()  # (3, K)

    segmented = Image.fromarray(pixels_crop.permute(1, 2, 0).numpy())
    return SegmentedView(
        mode=mode,
        crop=dense,
        keep=keep,
        positions=positions,
        crop_box=(nx0, ny0, nx1, ny1),
        cell_box=(r0, c0, r1, c1),
        segmented_image=segmented,
        overlap=overlap,
    )


def second_look_view(image: Image.Image, mask, image_processor, *, mode: RoiMode = "mask",
                     **view_settings) -> tuple[SegmentedView | None, str | None]:
    """The segmented view a conversation continues with, and the fallback taken (if any).

    An empty mask (or one that covers no cell) shows the original image again: a full-mask view
    without zoom, i.e. the original tokens at their original positions (fallback ``empty_mask``).
    ``view_settings`` are ``ViewConfig``'s fields. The reasoning loop, Stage 2 and ``eval sheet``
    all take this path, so they fall back the same way.
    """
    try:
        return build_segmented_view(image, mask, image_processor, mode=mode, **view_settings), None
    except EmptyMaskError:
        full = np.ones((image.height, image.width), dtype=bool)
        settings = {**view_settings, "zoom": False}
        return build_segmented_view(image, full, image_processor, mode="mask", **settings), "empty_mask"
