"""HallusionBench (Guan et al., 2024): yes/no questions on original and edited figures.

Data (``--data``): the folder as published (``tianyi-lab/HallusionBench``, images unzipped)::

    HallusionBench/
      HallusionBench.json   [{"category": "VD", "subcategory": "illusion", "visual_input": "1", "set_id": "0",
                              "figure_id": "0", "question_id": "0", "question": "Is the right orange circle ...?",
                              "gt_answer": "1", "gt_answer_details": "...",
                              "filename": "./hallusion_bench/VD/illusion/0_0.png"}, ...]
      hallusion_bench/VD/illusion/0_0.png ...

Parquet copy (when ``HallusionBench.json`` is absent): ``lmms-lab/HallusionBench``,
``data/image-*.parquet`` (and ``data/non_image-*.parquet`` for ``--split all``, when present), the
JSON's columns plus ``image``, read by ``hub_copies.py``; the same ids, prompts, answers and groups.

``category`` is VD (visual dependent) or VS (visual supplement); ``visual_input`` 0 means the question
is asked without a figure (``filename`` null). ``gt_answer`` "1" is yes, "0" is no. An image is found
at ``filename``, or at ``<category>/<subcategory>/<set_id>_<figure_id>.png`` (the official layout).

``--split image`` (default) keeps the questions with a figure, as VLMEvalKit and lmms-eval's ``image``
split do; ``--split all`` adds the text-only ones (item.image is None), as the official evaluation does.

Prompt: the question, then "Please answer yes or no." Score: rule-based yes/no extraction (the official
harness asks GPT-4 to judge; see answers.py). Metrics: aAcc, qAcc, fAcc (definitions in metrics.py) and
``overall``, their mean (VLMEvalKit's "Overall"). The headline is qAcc, question-pair accuracy, by which
HallusionBench's own leaderboard ranks models; aAcc (per question) is far higher and not comparable
with tables that report pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.answers import score_sample
from seganswer_cli.eval.hub_copies import HubCopy, find_copy, locate_or_copy, read_copy
from seganswer_cli.eval.items import BenchmarkData, EvalItem, ImageRef, MissingImage, SampleResult, find_file
from seganswer_cli.eval.metrics import HallusionRow, accuracy, hallusion_metrics
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import read_json_records
from seganswer_cli.model.conversation import YES_NO_INSTRUCTION

NAME = "hallusionbench"
SPLITS = ("image", "all")
DEFAULT_SPLIT = "image"

PROTOCOL = Protocol(
    prompt="the question, then 'Please answer yes or no.'",
    extraction="yes/no at the start of the answer, a negation in its first sentence, or a lone yes (answers.py)",
    metrics="qAcc (question pairs, headline), fAcc (figures), aAcc (all questions), overall (their mean)",
    source="tianyi-lab/HallusionBench: evaluation.py, utils.py",
    judge="always",
    departures=("the official evaluation asks GPT-4 whether each answer is right; without --judge yes/no is read by rule",),
)
INSTRUCTION = YES_NO_INSTRUCTION
KEYS = ("category", "subcategory", "set_id", "figure_id", "question_id")
HUB_COPY = HubCopy(
    "lmms-lab/HallusionBench", ("data/image-*.parquet", "image-*.parquet"), (*KEYS, "question", "gt_answer")
)
#: The copy's split of text-only questions (no ``image`` column needed).
TEXT_ONLY_COPY = HubCopy(
    HUB_COPY.repo, ("data/non_image-*.parquet", "non_image-*.parquet"), HUB_COPY.columns, image=None
)

score = score_sample


def read(root: Path, split: str | None = None) -> BenchmarkData:
    """Items from the folder holding ``HallusionBench.json`` and its image tree."""
    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise UsageError(f"{NAME}: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    found = locate_or_copy(root, ["HallusionBench.json"], HUB_COPY, NAME)
    if not isinstance(found, Path):
        return _read_copy(root, found, split)
    path = found
    folders = [path.parent, path.parent / "hallusion_bench", Path(root)]
    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    for number, record in enumerate(read_json_records(path), start=1):
        if any(k not in record for k in (*KEYS, "question", "gt_answer")):
            raise DataError(
                f"{path}: record {number} lacks one of {', '.join((*KEYS, 'question', 'gt_answer'))}"
            )
        image = None
        if _has_figure(record) and record.get("filename"):
            groups = {k: str(record[k]) for k in KEYS}
            official = (
                f"{groups['category']}/{groups['subcategory']}/{groups['set_id']}_{groups['figure_id']}.png"
            )
            image = find_file(record["filename"], folders) or find_file(official, folders)
            if image is None:
                item_id = "_".join(groups[k] for k in KEYS)
                missing.append(MissingImage(item_id, str(record["filename"]), tuple(str(f) for f in folders)))
                continue
        elif split == "image":
            continue
        items.append(_item(record, image, f"{path}: record {number}"))
    return BenchmarkData(items, missing, source=str(path))


def _read_copy(root: Path, files: list[Path], split: str) -> BenchmarkData:
    """Items from lmms-lab's ``image`` split, plus its ``non_image`` split (if downloaded) for ``all``."""
    rows = read_copy(files, HUB_COPY)
    text_only = find_copy(root, TEXT_ONLY_COPY.files) if split == "all" else []
    if text_only:
        rows += [{**row, "image": None} for row in read_copy(text_only, TEXT_ONLY_COPY)]
    items = [
        _item(row, row["image"] if _has_figure(row) else None, f"{files[0].parent}: row {number}")
        for number, row in enumerate(rows, start=1)
        if _has_figure(row) or split == "all"
    ]
    return BenchmarkData(items, [], source=", ".join(str(f) for f in [*files, *text_only]))


def _has_figure(record: dict) -> bool:
    """``visual_input`` 0 marks a question asked without its figure (the JSON's ``filename`` is null)."""
    return str(record.get("visual_input", "1")) != "0"


def _item(record: dict, image: ImageRef | None, where: str) -> EvalItem:
    groups = {k: str(record[k]) for k in KEYS}
    item_id = "_".join(groups[k] for k in KEYS)
    answer = {"1": "yes", "0": "no"}.get(str(record["gt_answer"]).strip())
    if answer is None:
        raise DataError(f"{where} ({item_id}) has gt_answer {record['gt_answer']!r}, not 0/1")
    question = str(record["question"]).strip()
    return EvalItem(
        id=item_id,
        benchmark=NAME,
        image=image,
        question=question,
        prompt=f"{question}\n{INSTRUCTION}",
        answer=answer,
        answer_kind="yesno",
        groups=groups,
    )


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """aAcc, qAcc, fAcc, and aAcc's 95% Wilson interval."""
    rows = [HallusionRow(*(r.groups[k] for k in KEYS), correct=r.correct) for r in results]
    summary = hallusion_metrics(rows)
    overall = accuracy([r.correct for r in results])
    summary.update(aAcc_ci_low=overall.low, aAcc_ci_high=overall.high, n=float(len(results)))
    summary["overall"] = (summary["aAcc"] + summary["qAcc"] + summary["fAcc"]) / 3
    return summary
