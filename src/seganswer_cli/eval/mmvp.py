"""MMVP (Tong et al., 2024): 150 pairs of "CLIP-blind" images, one two-way question per image.

Data (``--data``): the folder as published (``MMVP/MMVP``)::

    MMVP/
      Questions.csv     Index,Question,Options,Correct Answer
                        1,Are the butterfly's wings closer to being open or closed?,(a) Open (b) Closed,(a)
      MMVP Images/      1.jpg ... 300.jpg   (image ``Index``.jpg)

Parquet copy (when ``Questions.csv`` is absent): a hub copy such as lmms-eval's (``lmms-lab-eval/MMVP``),
``data/*.parquet`` or ``*.parquet`` with the CSV's columns (any case) plus ``image``, read by
``hub_copies.py``; the same ids, prompts, options and pairs.

Questions ``2k-1`` and ``2k`` (1-based ``Index``) ask the same thing about the two images of pair k.

Prompt: the question, ``(A) Open`` / ``(B) Closed``, and the letter instruction (options re-lettered
upper case so every benchmark shares one extraction rule). Score: the extracted letter equals the
``Correct Answer`` letter. Metrics: pair accuracy (both questions of a pair right: the headline, the
number MMVP reports) and per-question accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.answers import score_sample
from seganswer_cli.eval.hub_copies import HubCopy, locate_or_copy, read_copy
from seganswer_cli.eval.items import BenchmarkData, EvalItem, ImageRef, MissingImage, SampleResult, find_file
from seganswer_cli.eval.metrics import accuracy, mmvp_metrics
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import read_csv_rows, require_columns
from seganswer_cli.model.conversation import llava_prompt

NAME = "mmvp"
SPLITS = ("test",)
DEFAULT_SPLIT = "test"

PROTOCOL = Protocol(
    prompt="the question, (A)/(B) options, the letter instruction (LLaVA's layout)",
    extraction="the option letter or the option's text (answers.py)",
    metrics="pair accuracy (both questions of an image pair right; headline) and question accuracy",
    source="tsb0601/MMVP: scripts/evaluate_mllm.py, scripts/gpt_grader.py",
    judge="always",
    departures=("the official grader asks GPT-4 whether each answer matches; without --judge the letter or option text is read by rule",),
)
COLUMNS = ("Index", "Question", "Options", "Correct Answer")
HUB_COPY = HubCopy("lmms-lab-eval/MMVP", ("data/*.parquet", "*.parquet"), COLUMNS)
_OPTION = re.compile(r"\(([a-zA-Z])\)\s*([^()]*)")

score = score_sample


def parse_options(text: str) -> dict[str, str]:
    """``"(a) Open (b) Closed"`` -> ``{"A": "Open", "B": "Closed"}``."""
    return {letter.upper(): value.strip() for letter, value in _OPTION.findall(text) if value.strip()}


def read(root: Path, split: str | None = None) -> BenchmarkData:
    """Items from the folder holding ``Questions.csv`` and ``MMVP Images/``."""
    if (split or DEFAULT_SPLIT) not in SPLITS:
        raise UsageError(f"{NAME}: MMVP has one split, 'test'; got {split!r}")
    found = locate_or_copy(root, ["Questions.csv"], HUB_COPY, NAME)
    if not isinstance(found, Path):
        rows = read_copy(found, HUB_COPY)
        items = [_item(row, row["image"], f"{found[0]}: row {n}") for n, row in enumerate(rows, start=1)]
        return BenchmarkData(items, [], source=", ".join(str(f) for f in found))
    path = found
    rows = read_csv_rows(path)
    require_columns(path, rows[0].keys() if rows else [], COLUMNS)
    folders = [path.parent / "MMVP Images", path.parent, Path(root) / "MMVP Images", Path(root)]
    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    for row in rows:
        if not (row.get("Index") or "").strip():
            continue
        index = int(row["Index"])
        image = next(
            (p for ext in (".jpg", ".png", ".jpeg") if (p := find_file(f"{index}{ext}", folders))), None
        )
        if image is None:
            missing.append(
                MissingImage(str(index), f"MMVP Images/{index}.jpg", tuple(str(f) for f in folders))
            )
            continue
        items.append(_item(row, image, f"{path}: Index {index}"))
    return BenchmarkData(items, missing, source=str(path))


def _item(row: dict, image: ImageRef, where: str) -> EvalItem:
    try:
        index = int(str(row["Index"]).strip())
    except ValueError:
        raise DataError(f"{where}: Index {row['Index']!r} is not a number") from None
    options = parse_options(str(row["Options"]))
    answer = str(row["Correct Answer"]).strip().strip("()").upper()
    if len(options) < 2 or answer not in options:
        raise DataError(f"{where}: cannot read options {row['Options']!r} / answer {row['Correct Answer']!r}")
    question = str(row["Question"]).strip()
    return EvalItem(
        id=str(index),
        benchmark=NAME,
        image=image,
        question=question,
        prompt=llava_prompt(question, options),
        answer=answer,
        options=options,
        groups={"index": str(index), "pair": str((index - 1) // 2)},
    )


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """Question accuracy (95% Wilson interval) and pair accuracy."""
    summary = mmvp_metrics((int(r.groups["index"]), r.correct) for r in results)
    question = accuracy([r.correct for r in results])
    summary.update(
        question_accuracy_ci_low=question.low, question_accuracy_ci_high=question.high, n=float(len(results))
    )
    return summary
