"""The core model package: Qwen2.5-VL + ``<|seg|>`` + projector + SAM 2.1 + the sparse-position
patch encoder. Imports nothing from ``cli``, ``train``, ``eval`` or ``data``.

    from seganswer_cli.model import SegAnswerModel
    model = SegAnswerModel.from_preset("tiny")
"""

from seganswer_cli.model.losses import LossWeights
from seganswer_cli.model.presets import PRESETS, ViewConfig
from seganswer_cli.model.seganswer import SegAnswerModel, SegAnswerOutput
from seganswer_cli.model.sequence import Batch, Sequence, SequenceBuilder
from seganswer_cli.model.sparse_patches import DenseImage, SegmentedView, build_segmented_view

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
