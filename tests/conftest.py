"""Shared fixtures: tiny models built in code (seconds on CPU), deterministic images and masks."""

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_model():
    """One tiny SegAnswerModel for the session; tests that change weights build their own."""
    from seganswer_cli.model import SegAnswerModel

    return SegAnswerModel.from_preset("tiny")


@pytest.fixture
def noise_image():
    """A 180x240 RGB image of seeded noise (every pixel distinct enough to catch misplaced crops)."""
    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(180, 240, 3) * 255).astype(np.uint8))


@pytest.fixture
def blob_mask():
    """A non-rectangular mask on the 180x240 image: a disc plus a thin bar."""
    yy, xx = np.mgrid[:180, :240]
    mask = (yy - 70) ** 2 + (xx - 90) ** 2 < 35**2
    mask[130:136, 100:200] = True
    return mask
