"""How a benchmark is scored, stated once per benchmark module as ``PROTOCOL``.

Each benchmark module (``vstar.py``, ``pope.py``...) declares the protocol it follows: how the prompt
is built, which rule reads the answer, the metrics and the official script they follow, whether that
protocol asks a judge model, and every place where we depart from it. ``summary.json`` records it
under ``protocol`` and docs/evaluation.md's protocol table lists the same fields, so a reader of a
number can tell what produced it without reading code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

#: Where the official protocol uses a judge model: ``never``; ``fallback`` (when its rules read no
#: answer, as MMBench's ChatGPT matching does); ``always`` (every answer is judged, as HallusionBench's
#: GPT-4 evaluation does). Without ``--judge`` the rule-based extraction stands in, and summaries say so.
JudgeUse = Literal["never", "fallback", "always"]


@dataclass(frozen=True)
class Protocol:
    """One benchmark's scoring protocol, as recorded in summaries and documented."""

    prompt: str
    """What the model is sent: the published text, or how the question and options are laid out."""
    extraction: str
    """How the answer is read from the output (after ``conversation.answer_of`` picks the last turn's)."""
    metrics: str
    """The metrics reported and how they are aggregated."""
    source: str
    """The official evaluation script (repository and path) these follow."""
    judge: JudgeUse = "never"
    departures: tuple[str, ...] = field(default_factory=tuple)
    """Where and why we score differently from ``source``; empty when we do not."""

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "departures": list(self.departures)}
