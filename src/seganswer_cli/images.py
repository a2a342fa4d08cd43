"""Reading images the same way everywhere (CLI, data readers, evaluation), with clear errors.

Every image a command reads goes through ``load_image``:

- **Orientation.** A photo whose EXIF ``Orientation`` tag says "rotate 90°" (what phones write for a
  portrait shot stored as a landscape bitmap) is turned upright (``ImageOps.exif_transpose``), so it
  is answered, segmented and drawn the way a viewer shows it. Masks, boxes and ``--save-vis``
  figures are in the upright image's pixels.
- **Size.** Images over ``MAX_IMAGE_PIXELS`` pixels are refused from the header, before decoding,
  with our message. This limit is the one in force: Pillow's own decompression-bomb guard (89.5 MP by
  default, ``PIL.Image.MAX_IMAGE_PIXELS``) is lifted while our loader opens and decodes a file, so an
  image between Pillow's limit and ours loads, and one over ours gets our line, not Pillow's text.
  Elsewhere in the process Pillow's guard is left as it was.

Kept free of torch so data readers and the CLI can use it cheaply.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from seganswer_cli.errors import ImageReadError

#: Images above this many pixels are refused (decompression-bomb guard): 134 MP, twice 8K x 8K,
#: which covers HR-Bench 8K.
MAX_IMAGE_PIXELS = 8192 * 8192 * 2

ImageSource = str | os.PathLike | bytes | Image.Image

_ORIENTATION = ExifTags.Base.Orientation


#: What a transparent pixel is shown over: white, as a browser or an image viewer shows it.
TRANSPARENT_BACKGROUND = (255, 255, 255)


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as RGB. Transparency (RGBA, LA, a palette or grey image with a transparent colour) is
    composited over ``TRANSPARENT_BACKGROUND``, not dropped: the colour values under transparent
    pixels are arbitrary (often black), and the picture a user sees has none of them."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, TRANSPARENT_BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def load_image(source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None) -> Image.Image:
    """Open ``source`` (a path, encoded bytes or a PIL image) as an upright RGB ``PIL.Image``.

    Raises ``ImageReadError`` naming the file when it is missing, not an image, truncated, or has more
    than ``max_pixels`` pixels (checked from the header, before decoding). A PIL image is taken as
    given (only converted to RGB): whoever opened it decided its orientation.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    label = name or (f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source))
    if isinstance(source, bytes):
        fp = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageReadError(f"image not found: {path}")
        if path.is_dir():
            raise ImageReadError(f"expected an image file, got a folder: {path}")
        fp = path
    try:
        with _our_size_limit(), Image.open(fp) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"image too large: {label} is {width}x{height} "
                    f"({width * height} pixels > limit {max_pixels})"
                )
            img.load()
            upright = ImageOps.exif_transpose(img) if _orientation(img) != 1 else img
            return to_rgb(upright)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        # OSError: truncated or corrupt data; SyntaxError and ValueError: some plugins' broken headers
        raise ImageReadError(f"cannot read image {label}: {e}") from None


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1: upright, also when there is no EXIF or it cannot be parsed)."""
    try:
        return int(img.getexif().get(_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1


_guard_lock = threading.Lock()
_guard_users = 0
_pillow_limit: int | None = None


@contextmanager
def _our_size_limit() -> Iterator[None]:
    """Lift Pillow's decompression-bomb guard while our loader (which checks ``max_pixels`` itself)
    reads a file; counted, so that threads loading at once restore Pillow's value only when the last
    one is done."""
    global _guard_users, _pillow_limit
    with _guard_lock:
        if _guard_users == 0:
            _pillow_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _guard_users += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_users -= 1
            if _guard_users == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit


def flat_colour_share(image: Image.Image, colours: int = 16) -> float:
    """Share of a picture's pixels that are its background or one of its ``colours`` most common
    other colours: ~1 for flat-coloured drawings (a shapes-world scene, plain or noisy background,
    a JPEG of one), far less for photos and gradients.

    Colours are counted in 16-level bins per channel; the background is the most common bin's mean
    colour and every pixel within 64 of it (a noisy background's std of 12 is ~60 at 3 sigma);
    measured on a regular subsample of at most ~64 k pixels."""
    import numpy as np

    pixels = np.asarray(to_rgb(image))
    step = max(1, int(np.ceil(np.sqrt(pixels.shape[0] * pixels.shape[1] / 65536))))
    pixels = pixels[::step, ::step].reshape(-1, 3)
    if not len(pixels):
        return 0.0
    bins = (pixels // 16).astype(np.int64) @ np.array([256, 16, 1])
    values, counts = np.unique(bins, return_counts=True)
    background = pixels[bins == values[counts.argmax()]].mean(axis=0)
    near_background = np.linalg.norm(pixels - background, axis=1) <= 64
    rest, rest_counts = np.unique(bins[~near_background], return_counts=True)
    common = rest[np.argsort(rest_counts)[::-1][:colours]]
    return float((near_background | np.isin(bins, common)).mean())
