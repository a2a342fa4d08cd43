"""The core model package: Qwen2.5-VL + ``<|seg|>`` + projector + SAM 2.1 + the sparse-position
patch encoder, and the conversation laid out and read the same way everywhere (``conversation``).
Imports nothing from ``cli``, ``train``, ``eval`` or ``data``.

    from seganswer_cli.model import SegAnswerModel
    model = SegAnswerModel.from_preset("tiny")

The names below load their module on first use, so the torch-free parts (``tokens``,
``conversation``) can be imported without torch: the benchmark scorers read answers with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Exported name -> the submodule that defines it.
_EXPORTS = {
    "LossWeights": "losses",
    "PRESETS": "presets",
    "ViewConfig": "presets",
    "SegAnswerModel": "seganswer",
    "SegAnswerOutput": "seganswer",
    "Batch": "sequence",
    "Sequence": "sequence",
    "SequenceBuilder": "sequence",
    "DenseImage": "sparse_patches",
    "SegmentedView": "sparse_patches",
    "build_segmented_view": "sparse_patches",
}

__all__ = [
    "PRESETS",
    "Batch",
    "DenseImage",
    "LossWeights",
    "SegAnswerModel",
    "SegAnswerOutput",
    "SegmentedView",
    "Sequence",
    "SequenceBuilder",
    "ViewConfig",
    "build_segmented_view",
]
assert sorted(__all__) == sorted(_EXPORTS)

if TYPE_CHECKING:
    from seganswer_cli.model.losses import LossWeights
    from seganswer_cli.model.presets import PRESETS, ViewConfig
    from seganswer_cli.model.seganswer import SegAnswerModel, SegAnswerOutput
    from seganswer_cli.model.sequence import Batch, Sequence, SequenceBuilder
    from seganswer_cli.model.sparse_patches import DenseImage, SegmentedView, build_segmented_view


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
