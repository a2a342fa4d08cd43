"""Training and evaluation data: one sample type for every source.

Public API::

    from seganswer_cli.data import (
        SegSample, VQASample, ImageRef, LazyMask,        # sample types
        open_dataset, detect_format, FORMATS, Dataset,    # readers of the published formats
        parse_data_spec, parse_data_specs, DataSpec, Mixture, open_mixture,   # --data NAME=PATH[:w]
        ShapesConfig, generate_samples, write_synthetic,  # the shapes world
    )

Importing this package loads numpy, PIL and pycocotools, never torch.
"""

from seganswer_cli.data.formats import FORMATS, Dataset, Format, detect_format, open_dataset
from seganswer_cli.data.mixture import DataSpec, Mixture, open_mixture, parse_data_spec, parse_data_specs
from seganswer_cli.data.onerror import ON_ERROR_CHOICES, RecordErrors, SkippedRecord
from seganswer_cli.data.samples import OPTION_LETTERS, ImageRef, LazyMask, Sample, SegSample, VQASample
from seganswer_cli.data.shapes_datasets import SAMPLE_KINDS, generate_samples, write_synthetic
from seganswer_cli.data.shapes_scenes import Scene, ShapesConfig

__all__ = [
    "FORMATS",
    "ON_ERROR_CHOICES",
    "OPTION_LETTERS",
    "SAMPLE_KINDS",
    "DataSpec",
    "Dataset",
    "Format",
    "ImageRef",
    "LazyMask",
    "Mixture",
    "RecordErrors",
    "Sample",
    "Scene",
    "SegSample",
    "ShapesConfig",
    "SkippedRecord",
    "VQASample",
    "detect_format",
    "generate_samples",
    "open_dataset",
    "open_mixture",
    "parse_data_spec",
    "parse_data_specs",
    "write_synthetic",
]
