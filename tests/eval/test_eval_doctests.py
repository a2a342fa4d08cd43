"""The examples in the eval modules' docstrings are run, so they cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["answers", "metrics", "multiple_choice"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"seganswer_cli.eval.{name}")
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0
