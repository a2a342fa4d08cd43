"""Overlays show the mask without changing what is under it (the region's colour is often the question)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from seganswer_cli.viz import MASK_COLOURS, overlay_mask, overlay_steps


def picture() -> tuple[Image.Image, np.ndarray]:
    image = np.full((60, 80, 3), 200, dtype=np.uint8)
    image[20:35, 30:45] = (240, 210, 40)  # a yellow square
    image[40:50, 5:15] = (40, 90, 225)
    mask = np.zeros((60, 80), dtype=bool)
    mask[20:35, 30:45] = True
    return Image.fromarray(image), mask


def test_pixels_under_the_mask_keep_their_exact_colour():
    image, mask = picture()
    out = np.asarray(overlay_mask(image, mask))
    original = np.asarray(image)
    np.testing.assert_array_equal(out[mask], original[mask])  # the yellow stays yellow
    # the outline lies just outside the mask, in the mask colour, with a dark ring around it
    assert (out[19, 30:45] == MASK_COLOURS[0]).all() and (out[18, 30:45] == (20, 20, 20)).all()
    # far from the mask the image is faded toward grey: the blue becomes less saturated, not another hue
    blue = out[45, 10].astype(int)
    assert blue[2] > blue[0] and np.ptp(blue) < np.ptp(original[45, 10].astype(int))
    assert (out[5, 70] != original[5, 70]).any()


def test_several_steps_fade_once_and_outline_each():
    from types import SimpleNamespace

    image, mask = picture()
    other = np.zeros_like(mask)
    other[40:50, 5:15] = True
    out = np.asarray(overlay_steps(image, [SimpleNamespace(mask=mask, box=None), SimpleNamespace(mask=other, box=None)]))
    original = np.asarray(image)
    np.testing.assert_array_equal(out[mask | other], original[mask | other])
    assert (out[39, 5:15] == MASK_COLOURS[1]).all()
    # faded once: the same as one overlay of the union
    single = np.asarray(overlay_mask(image, mask | other))
    np.testing.assert_array_equal(out[5, 70], single[5, 70])


def test_an_empty_mask_leaves_the_image_as_it_is():
    image, mask = picture()
    np.testing.assert_array_equal(np.asarray(overlay_mask(image, np.zeros_like(mask))), np.asarray(image))
