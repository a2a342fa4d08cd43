"""V* Bench (Wu & Xie, 2024): 191 multiple-choice questions about small details in large images.

Data (``--data``): the ``vstar_bench`` folder as published (``craigwu/vstar_bench``)::

    vstar_bench/
      test_questions.jsonl      {"image": "direct_attributes/sa_4690.jpg", "text": "What is ...?\\n(A) ...\\n
                                 (B) ...\\nAnswer with the option's letter from the given choices directly.",
                                 "category": "direct_attributes", "question_id": 0, "label": "A"}
      direct_attributes/        115 images (+ one .json annotation each, not needed here)
      relative_position/        76 images

Prompt: the record's ``text`` unchanged (question, ``(A) ...`` options, letter instruction).
Score: the extracted option letter equals ``label``. Metrics: accuracy per subset and overall
(``--split direct_attributes`` or ``relative_position`` evaluates one subset).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.answers import score_sample
from seganswer_cli.eval.items import BenchmarkData, EvalItem, MissingImage, SampleResult, find_file
from seganswer_cli.eval.metrics import accuracy_summary
from seganswer_cli.eval.multiple_choice import split_inline_options
from seganswer_cli.eval.reading import locate, read_json_records

NAME = "vstar"
SUBSETS = ("direct_attributes", "relative_position")
SPLITS = ("all", *SUBSETS)
DEFAULT_SPLIT = "all"

score = score_sample


def read(root: Path, split: str | None = None) -> BenchmarkData:
    """Items of ``split`` (``all`` or one subset) from the folder holding ``test_questions.jsonl``."""
    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise UsageError(f"{NAME}: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    path = locate(root, ["test_questions.jsonl"], NAME)
    folders = [path.parent, Path(root)]
    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    for number, record in enumerate(read_json_records(path), start=1):
        for key in ("image", "text", "label"):
            if key not in record:
                hint = (
                    " (an early release without answers; download the current one)" if key == "label" else ""
                )
                raise DataError(f"{path}: record {number} has no {key!r}{hint}")
        category = str(record.get("category") or Path(record["image"]).parts[0])
        if split != "all" and category != split:
            continue
        item_id = str(record.get("question_id", number - 1))
        question, options = split_inline_options(str(record["text"]))
        if not options:
            raise DataError(f"{path}: record {number} lists no '(A) ...' options in its text")
        image = find_file(record["image"], folders)
        if image is None:
            missing.append(MissingImage(item_id, record["image"], tuple(str(f) for f in folders)))
            continue
        items.append(
            EvalItem(
                id=item_id,
                benchmark=NAME,
                image=image,
                question=question,
                prompt=str(record["text"]).strip(),
                answer=str(record["label"]).strip().strip("()").upper(),
                options=options,
                groups={"category": category},
            )
        )
    return BenchmarkData(items, missing, source=str(path))


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """Overall accuracy (with a 95% Wilson interval) and ``accuracy/<subset>``."""
    return accuracy_summary([r.correct for r in results], [r.groups.get("category", "") for r in results])
