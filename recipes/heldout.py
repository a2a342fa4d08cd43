"""What the question probes share: their command line and the held-out shapes-vqa questions
(seed 100003, the benchmark's). Imported by the scripts beside it (``answer-scores.py``,
``question-grounding.py``)."""

from __future__ import annotations

import argparse

import torch

from seganswer_cli.data.shapes_datasets import generate_samples
from seganswer_cli.eval.shapes import DEFAULT_CONFIG, HELD_OUT_SEED


def parse_args(doc: str, *, many_models: bool) -> argparse.Namespace:
    """``MODEL`` (or ``MODEL...``), ``--n`` and ``--threads``, checked; torch set to ``--threads``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if many_models:
        parser.add_argument("models", nargs="+", help="model folders or presets")
    else:
        parser.add_argument("model", help="model folder or preset")
    parser.add_argument("--n", type=int, default=100, help="held-out questions (the first N)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.n < 1:
        parser.error("--n must be at least 1")
    torch.set_num_threads(args.threads)
    return args


def questions(n: int) -> list:
    """The first ``n`` held-out shapes-vqa questions as ``VQASample`` (annotated regions included)."""
    return list(generate_samples("vqa", n, DEFAULT_CONFIG, seed=HELD_OUT_SEED))
