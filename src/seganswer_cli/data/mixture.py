"""Mixtures of datasets with sampling weights, and the ``--data NAME=PATH[:weight]`` syntax.

LISA samples its sources at fixed rates rather than concatenating them, so a small set (ReasonSeg)
is not drowned by a big one (RefCOCO); the paper mixes ten sets in Stage 1 the same way. A
``Mixture`` picks a source with probability proportional to its weight, then the next sample of
that source in a per-epoch shuffled order. Everything is seeded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seganswer_cli.data.formats import FORMATS, open_dataset
from seganswer_cli.data.onerror import OnError, RecordErrors
from seganswer_cli.data.samples import Sample
from seganswer_cli.errors import UsageError


@dataclass(frozen=True)
class DataSpec:
    """One ``--data`` entry."""

    name: str
    """Label of the source in logs and reports; also its format when it names one (``refcocog``)."""
    path: Path
    """Folder or file the user pointed at."""
    weight: float = 1.0
    """Relative sampling rate (> 0); rates are normalised over the mixture."""
    format: str | None = None
    """Format to read with: ``name`` when it is a format name, else None (detected from the files)."""


def parse_data_spec(text: str) -> DataSpec:
    """Parse ``NAME=PATH[:weight]`` (or a bare ``PATH``, named after its folder).

    >>> parse_data_spec("refcocog=/data/refer_seg:2")
    DataSpec(name='refcocog', path=PosixPath('/data/refer_seg'), weight=2.0, format='refcocog')
    >>> parse_data_spec("mine=./shapes").format is None
    True
    """
    name, rest, weight_text = _split_data_spec(text)
    weight = float(weight_text) if weight_text is not None else 1.0
    if not math.isfinite(weight) or weight <= 0:
        raise UsageError(f"--data {text.strip()!r}: weight must be a positive number, got {weight:g}")
    if not rest:
        raise UsageError(f"--data {text.strip()!r}: missing PATH; expected NAME=PATH[:weight]")
    path = Path(rest).expanduser()
    if not name:
        name = path.name or str(path)
    return DataSpec(name=name, path=path, weight=weight, format=name if name in FORMATS else None)


def with_data_path(text: str, path: str) -> str:
    """The ``--data`` value ``text`` with its PATH replaced; its NAME and weight as written.

    >>> with_data_path("rl=/runs/demo/data/rl:2", "../data/rl")
    'rl=../data/rl:2'
    >>> with_data_path("/runs/demo/data/rl", "../data/rl")
    '../data/rl'
    """
    name, _, weight_text = _split_data_spec(text)
    return (f"{name}=" if name else "") + path + (f":{weight_text}" if weight_text is not None else "")


def _split_data_spec(text: str) -> tuple[str, str, str | None]:
    """``NAME=PATH[:weight]`` as ``(name, path text, weight text)``: name empty when not given,
    weight None when not given."""
    text = text.strip()
    if not text:
        raise UsageError("empty --data value; expected NAME=PATH[:weight]")
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = "", text
    head, colon, tail = rest.rpartition(":")
    if colon and head and _is_number(tail):
        return name.strip(), head, tail
    return name.strip(), rest, None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_data_specs(values: Sequence[str]) -> list[DataSpec]:
    """Parse several ``--data`` values; names must be unique."""
    specs = [parse_data_spec(v) for v in values]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise UsageError(f"--data name {spec.name!r} given twice; names label the sources and must differ")
        seen.add(spec.name)
    return specs


class Mixture:
    """Endless weighted sampling over several in-memory datasets, reproducible from ``seed``."""

    def __init__(self, sources: Sequence[Sequence[Sample]], weights: Sequence[float], *,
                 names: Sequence[str] | None = None, seed: int = 0) -> None:
        if not sources:
            raise UsageError("a mixture needs at least one dataset")
        if len(weights) != len(sources):
            raise UsageError(f"{len(sources)} datasets but {len(weights)} weights")
        self.names = list(names) if names is not None else [f"source{i}" for i in range(len(sources))]
        empty = [n for n, s in zip(self.names, sources, strict=True) if len(s) == 0]
        if empty:
            raise UsageError(f"dataset(s) with no samples: {', '.join(empty)}")
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise UsageError(f"weights must be positive, got {list(weights)}")
        self.sources = [list(s) for s in sources]
        self.probabilities = w / w.sum()
        self.seed = seed

    def __iter__(self) -> Iterator[Sample]:
        for _, sample in self.draw_indexed():
            yield sample

    def draw_indexed(self) -> Iterator[tuple[int, Sample]]:
        """Endless ``(source index, sample)`` pairs."""
        rng = np.random.default_rng(self.seed)
        orders = [rng.permutation(len(s)) for s in self.sources]
        positions = [0] * len(self.sources)
        while True:
            k = int(rng.choice(len(self.sources), p=self.probabilities))
            if positions[k] == len(orders[k]):  # source exhausted: new epoch, new order
                orders[k] = rng.permutation(len(self.sources[k]))
                positions[k] = 0
            sample = self.sources[k][int(orders[k][positions[k]])]
            positions[k] += 1
            yield k, sample

    def take(self, n: int) -> list[Sample]:
        """The first ``n`` draws."""
        out = []
        for sample in self:
            if len(out) == n:
                break
            out.append(sample)
        return out


def open_mixture(specs: Sequence[DataSpec], *, on_error: OnError = "stop", seed: int = 0,
                 split: str | None = None) -> tuple[Mixture, dict[str, RecordErrors]]:
    """Read every dataset of ``specs`` into memory (samples are light: images and masks stay lazy).

    Returns the mixture and, per source name, the records skipped while reading it.
    """
    sources, skipped = [], {}
    for spec in specs:
        dataset = open_dataset(spec.path, spec.format, split=split, on_error=on_error)
        sources.append(dataset.take())
        skipped[spec.name] = dataset.errors
    return Mixture(sources, [s.weight for s in specs], names=[s.name for s in specs], seed=seed), skipped
