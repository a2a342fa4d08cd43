"""shapes-vqa: V*-like questions about a small target in the shapes world, offline (see ``shapes.py``).

Data: generated from a held-out seed when ``--data`` is not given, else a folder written by
``seganswer data synth --kind vqa``. Questions ask a small target's colour, its shape, or its
position relative to another shape; half are multiple choice.

Prompt (``conversation.prompt_and_answer``, what Stage 2 trains on): multiple choice in V*'s style
(question, ``(A) ...`` lines, "Answer with the option's letter from the given choices directly.") or
MMBench's (``Question:``/``Options:``), scored by the extracted letter; yes/no questions followed by
"Please answer yes or no.", scored by the yes/no extraction; free text is the question alone, scored by
the normalised word (``answers.py``). Metrics: accuracy (95% Wilson interval) overall, per question
type (``accuracy/colour``, ``accuracy/shape``, ``accuracy/position``, ``accuracy/exists``) and, for a
folder mixing prompt formats, per format (``accuracy/format:free|vstar|mmbench|yesno``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seganswer_cli.data.samples import VQASample
from seganswer_cli.errors import DataError
from seganswer_cli.eval.answers import score_sample
from seganswer_cli.eval.items import BenchmarkData, EvalItem, SampleResult
from seganswer_cli.eval.metrics import accuracy_summary, grouped_accuracy
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.shapes import DEFAULT_SPLIT, SPLITS, image_of, read_samples
from seganswer_cli.masks import encode_rle
from seganswer_cli.model.conversation import lettered, prompt_and_answer

NAME = "shapes-vqa"

PROTOCOL = Protocol(
    prompt="V*'s layout: question, (A)... options, the letter instruction; free-text questions alone",
    extraction="the option letter, or the normalised short answer (answers.py)",
    metrics="accuracy overall and per question type",
    source="this project: the shapes world, V*'s prompt layout",
)
__all__ = ["DEFAULT_SPLIT", "SPLITS", "read", "score", "summarize"]

score = score_sample


def read(root: Path | None, split: str | None = None, *, limit: int | None = None) -> BenchmarkData:
    """The questions: generated (``root`` None; only the first ``limit``) or from a ``data synth --kind vqa`` folder."""
    samples, missing, source = read_samples(root, split, name=NAME, kind="vqa", limit=limit)
    return BenchmarkData([_item(s, source) for s in samples], missing, source=source)


def _item(sample: VQASample, source: str) -> EvalItem:
    layout = sample.extra.get("prompt_format") or ("vstar" if sample.options else "free")
    groups = {"question_type": str(sample.extra.get("question_type", "other")), "format": str(layout)}
    if sample.options:
        options = lettered(sample.options)
        if sample.answer_letter not in options:
            raise DataError(f"{source}: sample {sample.id} has answer letter {sample.answer_letter!r}, "
                            f"not one of its options {', '.join(options)}")
    prompt, answer = prompt_and_answer(sample)  # the same text Stage 2 trains on
    region = region_rle(sample)
    if sample.options:
        return EvalItem(id=sample.id, benchmark=NAME, image=image_of(sample), question=sample.question,
                        prompt=prompt, answer=answer, answer_kind="choice", options=options, groups=groups,
                        gt_rle=region)
    kind = "yesno" if layout == "yesno" else "number" if sample.answer_type == "number" else "text"
    return EvalItem(id=sample.id, benchmark=NAME, image=image_of(sample), question=sample.question,
                    prompt=prompt, answer=answer, answer_kind=kind, groups=groups, gt_rle=region)


def region_rle(sample: VQASample) -> dict | None:
    """The question's region as COCO RLE (``eval --masks gt``): its one mask as stored, or the union
    of several; None without one. Reading a benchmark decodes nothing for the usual one mask."""
    if len(sample.region_masks) == 1:
        return sample.region_masks[0].to_rle()
    region = sample.region()
    return None if region is None else encode_rle(region)


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """Overall accuracy (with a 95% Wilson interval), ``accuracy/<question type>`` and, when the
    questions come in several prompt formats, ``accuracy/format:<format>``."""
    summary = accuracy_summary([r.correct for r in results], [r.groups.get("question_type", "") for r in results])
    formats = [r.groups.get("format", "") for r in results]
    if len(set(formats)) > 1:
        for layout, value in sorted(grouped_accuracy(zip(formats, [r.correct for r in results], strict=True)).items()):
            summary[f"accuracy/format:{layout}"] = value
    return summary
