"""The examples in the data modules' docstrings run and hold."""

from __future__ import annotations

import doctest

import pytest

import seganswer_cli.masks
from seganswer_cli.data import coco_classes, mixture, virl39k


@pytest.mark.parametrize("module", [seganswer_cli.masks, coco_classes, mixture, virl39k])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
