"""Benchmarks by their command-line name: how to read each, prompt it and score it.

``BENCHMARKS`` maps every name ``seganswer eval`` accepts to a ``BenchmarkSpec``; each spec points at
one small module (``vstar.py``, ``pope.py``...) exposing ``read(root, split)``, ``score(output, item)``,
``summarize(results)`` and ``PROTOCOL`` (how it scores, see ``protocol.py``). Modules are imported on first use, so listing names stays cheap.

Adding a benchmark: write a module with those three functions (plus ``SPLITS``, ``DEFAULT_SPLIT``, ``PROTOCOL``) and
call ``register(BenchmarkSpec(...))``. ``shapes-vqa`` and ``shapes-refseg`` (the shapes world, on top of
the data package) generate their items when no folder is given, so the harness runs offline.

Typical use (what the eval command does)::

    spec = get_benchmark("vstar")
    data = spec.read(Path("vstar_bench"))              # BenchmarkData(items, missing)
    result = spec.score(model_output_text, item)      # SampleResult; masks for refcoco/reasonseg
    metrics = spec.summarize([result, ...])           # {"accuracy": ..., ...}
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from seganswer_cli.errors import UsageError
from seganswer_cli.eval.items import BenchmarkData, EvalItem, SampleResult
from seganswer_cli.eval.protocol import Protocol


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark name and the module that implements it."""

    name: str
    """The name typed on the command line."""
    module: str
    """Import path of the module with ``read``, ``score``, ``summarize``, ``SPLITS``, ``DEFAULT_SPLIT``."""
    task: Literal["qa", "segmentation"]
    """``qa``: ``score`` takes the model's text; ``segmentation``: it takes the predicted (H, W) mask."""
    description: str
    headline: str
    """The summary key to show first (the number the paper reports)."""
    read_kwargs: dict[str, Any] = field(default_factory=dict)
    """Fixed keyword arguments for ``read`` (e.g. ``resolution="8k"`` or ``dataset="refcoco+"``)."""
    generates: bool = False
    """``read`` makes the data itself when no folder is given (the shapes world, from a held-out seed)."""

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def splits(self) -> tuple[str, ...]:
        module = self.load()
        splits = module.SPLITS
        if isinstance(splits, dict):  # refcoco: {(dataset, split): ...}
            return tuple(s for d, s in splits if d == self.read_kwargs.get("dataset"))
        return tuple(splits)

    @property
    def option_orders(self) -> tuple[str, ...]:
        """The option orders ``read(..., option_order=...)`` takes, default first (V*); empty when none."""
        return tuple(getattr(self.load(), "OPTION_ORDERS", ()))

    @property
    def protocol_variants(self) -> tuple[str, ...]:
        """The scoring variants ``--protocol`` takes, default first (V*: generate, likelihood); empty
        when the benchmark has one way."""
        return tuple(getattr(self.load(), "PROTOCOL_VARIANTS", ()))

    @property
    def default_split(self) -> str:
        return self.load().DEFAULT_SPLIT

    def read(self, root: Path | None, split: str | None = None, **kwargs: Any) -> BenchmarkData:
        """The items of ``split`` (the default split when ``None``) from the folder ``root``.

        ``root`` may be ``None`` only for benchmarks that generate their data (``generates``)."""
        if root is None and not self.generates:
            raise UsageError(f"{self.name} needs --data: the benchmark folder as distributed (see docs/evaluation.md)")
        return self.load().read(None if root is None else Path(root), split, **{**self.read_kwargs, **kwargs})

    @property
    def score(self) -> Callable[..., SampleResult]:
        return self.load().score

    def summarize(self, results: Sequence[SampleResult]) -> dict[str, float]:
        return self.load().summarize(results)

    @property
    def protocol(self) -> Protocol:
        """How the module scores (``PROTOCOL``): prompt, extraction, metrics, official source, departures."""
        return self.load().PROTOCOL


def _spec(
    name: str, module: str, task: str, description: str, headline: str, **read_kwargs: Any
) -> BenchmarkSpec:
    return BenchmarkSpec(name, f"seganswer_cli.eval.{module}", task, description, headline, read_kwargs)  # type: ignore[arg-type]


#: Every benchmark the CLI knows, by the name users type. Keep the names stable: scripts depend on them.
BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        _spec("vstar", "vstar", "qa", "V* Bench: details in high-resolution images", "accuracy"),
        _spec("hrbench-4k", "hrbench", "qa", "HR-Bench 4K: FSP / FCP", "overall", resolution="4k"),
        _spec("hrbench-8k", "hrbench", "qa", "HR-Bench 8K: FSP / FCP", "overall", resolution="8k"),
        _spec("mmbench", "mmbench", "qa", "MMBench dev (CircularEval)", "circular_accuracy"),
        _spec("visulogic", "visulogic", "qa", "VisuLogic: visual logic puzzles", "accuracy"),
        _spec("mmvp", "mmvp", "qa", "MMVP: CLIP-blind image pairs", "pair_accuracy"),
        _spec("pope", "pope", "qa", "POPE: object hallucination (random/popular/adversarial)", "f1"),
        _spec("hallusionbench", "hallusionbench", "qa", "HallusionBench: qAcc / fAcc / aAcc", "qAcc"),
        _spec(
            "refcoco", "refcoco", "segmentation", "RefCOCO referring segmentation", "ciou", dataset="refcoco"
        ),
        _spec(
            "refcoco+",
            "refcoco",
            "segmentation",
            "RefCOCO+ referring segmentation",
            "ciou",
            dataset="refcoco+",
        ),
        _spec(
            "refcocog",
            "refcoco",
            "segmentation",
            "RefCOCOg referring segmentation",
            "ciou",
            dataset="refcocog",
        ),
        _spec("reasonseg", "reasonseg", "segmentation", "ReasonSeg reasoning segmentation", "giou"),
        # The shapes world: generated offline from a held-out seed, or read from a `data synth` folder.
        BenchmarkSpec("shapes-vqa", "seganswer_cli.eval.shapes_vqa", "qa",
                      "Shapes world: V*-like questions about small targets (offline)", "accuracy", generates=True),
        BenchmarkSpec("shapes-refseg", "seganswer_cli.eval.shapes_refseg", "segmentation",
                      "Shapes world: referring segmentation (offline)", "ciou", generates=True),
    )
}


def register(spec: BenchmarkSpec) -> None:
    """Add a benchmark (the shapes-world ones register here); a name can only be taken once."""
    if spec.name in BENCHMARKS:
        raise ValueError(f"benchmark {spec.name!r} is already registered")
    BENCHMARKS[spec.name] = spec


def get_benchmark(name: str) -> BenchmarkSpec:
    """The spec for ``name``; ``UsageError`` listing the known names otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise UsageError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


__all__ = [
    "BENCHMARKS",
    "BenchmarkData",
    "BenchmarkSpec",
    "EvalItem",
    "SampleResult",
    "get_benchmark",
    "register",
]
