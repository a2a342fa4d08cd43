"""MMBench (Liu et al., 2024): multiple choice over 20 abilities, scored with CircularEval.

Data (``--data``): the folder holding the VLMEvalKit TSV (``MMBench_DEV_EN.tsv``, ``MMBench_DEV_EN_V11.tsv``)
or the parquet export (``dev-*.parquet``)::

    columns: index, question, hint, A, B, C, D, answer, category, image (base64), source, l2-category,
             comment, split

Parquet copy (when no TSV is there): ``lmms-lab/MMBench``'s English dev split, ``en/dev-*.parquet``
(the same columns, ``L2-category`` capitalised, the image a ``datasets`` Image), read by ``hub_copies.py``.

A repeated image is stored once; other rows hold the ``index`` of the row that has it.

CircularEval: a question with n options is asked n times, its options cyclically shifted; it counts as
correct only if every shift is answered correctly. Files that already contain the shifted copies mark
them with ``index`` + k * 1,000,000 (grouped by ``index % 1_000_000``, as VLMEvalKit does); otherwise
the copies are made here with the same ids. ``--split dev`` (the default) needs the ``answer`` column;
MMBench's test answers are not public.

Prompt: VLMEvalKit's (``Hint:`` when present, ``Question:``, ``Options:``, ``A. ...``, instruction).
Metrics: ``circular_accuracy`` (headline), per ``l2-category``, and ``vanilla_accuracy`` (shift 0 only).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.answers import score_sample
from seganswer_cli.eval.hub_copies import HubCopy, locate_or_copy, read_copy
from seganswer_cli.eval.items import BenchmarkData, EvalItem, SampleResult
from seganswer_cli.eval.metrics import accuracy, all_correct_rate
from seganswer_cli.eval.multiple_choice import rotate
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import is_blank, read_tsv_lazy, require_columns, resolve_image_references
from seganswer_cli.model.conversation import vlmevalkit_prompt

NAME = "mmbench"
SPLITS = ("dev",)
DEFAULT_SPLIT = "dev"

PROTOCOL = Protocol(
    prompt="VLMEvalKit's multiple-choice layout (Hint:, Question:, Options:, A. ..., instruction)",
    extraction="the option letter (letter, answer phrase, then option text; answers.py)",
    metrics="CircularEval: a question counts when every rotation of its options is answered right",
    source="open-compass/VLMEvalKit: vlmeval/dataset/utils/multiple_choice.py",
    judge="fallback",
)
#: VLMEvalKit's offset between a question's circular copies.
CIRCULAR_OFFSET = 1_000_000
#: Columns the TSV and the parquet copies both need (besides ``image``).
COLUMNS = ("index", "question", "A", "B", "answer")
HUB_COPY = HubCopy("lmms-lab/MMBench", ("en/dev-*.parquet", "dev-*.parquet", "dev*.parquet"), COLUMNS)

score = score_sample


def read(root: Path, split: str | None = None, *, circular: bool = True) -> BenchmarkData:
    """Items (all circular copies when ``circular``) from the folder holding the MMBench TSV/parquet."""
    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise UsageError(f"{NAME}: only the dev split has public answers; got split {split!r}")
    found = locate_or_copy(root, ["MMBench_DEV_EN*.tsv", "MMBench*.tsv", "*.tsv"], HUB_COPY, NAME)
    if isinstance(found, Path):
        path = found
        header, rows = read_tsv_lazy(path, {"image"})
        require_columns(path, header, [*COLUMNS, "image"])
    else:
        path, rows = found[0], read_copy(found, HUB_COPY)
    resolve_image_references(path, rows)
    if rows and "split" in rows[0]:
        rows = [r for r in rows if is_blank(r.get("split")) or str(r["split"]).strip() == split]
    for row in rows:
        try:
            row["index"] = int(float(row["index"]))
        except (TypeError, ValueError):
            raise DataError(f"{path}: index {row['index']!r} is not a number") from None
    has_copies = any(row["index"] >= CIRCULAR_OFFSET for row in rows)
    items: list[EvalItem] = []
    for row in rows:
        index = row["index"]
        options = {
            k: str(row[k]).strip() for k in string.ascii_uppercase if k in row and not is_blank(row[k])
        }
        answer = "" if is_blank(row["answer"]) else str(row["answer"]).strip().upper()
        if answer not in options:
            raise DataError(
                f"{path}: index {index} answer {answer!r} is not one of its options {sorted(options)}"
            )
        shifts = [0] if has_copies or not circular else range(len(options))
        for shift in shifts:
            shifted, shifted_answer = rotate(options, answer, shift)
            items.append(_item(row, index + shift * CIRCULAR_OFFSET, shifted, shifted_answer))
    if not circular:
        items = [i for i in items if int(i.id) < CIRCULAR_OFFSET]
    return BenchmarkData(items, [], source=str(path))


def _item(row: dict, index: int, options: dict[str, str], answer: str) -> EvalItem:
    question = str(row["question"]).strip()
    hint = None if is_blank(row.get("hint")) else str(row["hint"]).strip()
    return EvalItem(
        id=str(index),
        benchmark=NAME,
        image=row["image"],
        question=question,
        prompt=vlmevalkit_prompt(question, options, hint),
        answer=answer,
        options=options,
        groups={
            "circular_group": str(index % CIRCULAR_OFFSET),
            "shift": str(index // CIRCULAR_OFFSET),
            "category": str(row.get("category", "")),
            "l2_category": str(row.get("l2-category", row.get("L2-category", ""))),
        },
    )


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """Circular accuracy overall and per l2-category, and vanilla accuracy on the unshifted questions."""
    summary = {
        "circular_accuracy": all_correct_rate((r.groups["circular_group"], r.correct) for r in results)
    }
    for l2 in sorted({r.groups.get("l2_category", "") for r in results} - {""}):
        subset = [r for r in results if r.groups.get("l2_category") == l2]
        summary[f"circular_accuracy/{l2}"] = all_correct_rate(
            (r.groups["circular_group"], r.correct) for r in subset
        )
    vanilla = accuracy([r.correct for r in results if r.groups.get("shift", "0") == "0"])
    summary.update(
        vanilla_accuracy=vanilla.value,
        vanilla_accuracy_ci_low=vanilla.low,
        vanilla_accuracy_ci_high=vanilla.high,
        questions=float(vanilla.n),
        n=float(len(results)),
    )
    return summary
