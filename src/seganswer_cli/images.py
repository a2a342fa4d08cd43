"""Reading images the same way everywhere (CLI, data readers, evaluation), with clear errors.

Kept free of torch so data readers and the CLI can use it cheaply.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from seganswer_cli.errors import ImageReadError

#: Images above this many pixels are refused (decompression-bomb guard). 8K x 8K covers HR-Bench 8K.
MAX_IMAGE_PIXELS = 8192 * 8192 * 2

ImageSource = str | os.PathLike | bytes | Image.Image


def load_image(source: ImageSource, *, max_pixels: int = MAX_IMAGE_PIXELS, name: str | None = None) -> Image.Image:
    """Open ``source`` (a path, encoded bytes or a PIL image) as an RGB ``PIL.Image``.

    Raises ``ImageReadError`` naming the file when it is missing, not an image, truncated, or has more
    than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB") if source.mode != "RGB" else source
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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        f"image too large: {label} is {width}x{height} "
                        f"({width * height} pixels > limit {max_pixels})"
                    )
                img.load()
                return img.convert("RGB")
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(f"cannot read image {label}: {e}") from None
    except OSError as e:
        raise ImageReadError(f"cannot read image {label}: {e}") from None
