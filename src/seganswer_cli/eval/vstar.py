"""V* Bench (Wu & Xie, 2024): 191 multiple-choice questions about small details in large images.

Data (``--data``): the ``vstar_bench`` folder as published (``craigwu/vstar_bench``)::

    vstar_bench/
      test_questions.jsonl      {"image": "direct_attributes/sa_4690.jpg", "text": "What is ...?\\n(A) ...\\n
                                 (B) ...\\nAnswer with the option's letter from the given choices directly.",
                                 "category": "direct_attributes", "question_id": 0, "label": "A"}
      direct_attributes/        115 images (+ one .json annotation each, not needed here)
      relative_position/        76 images

Ids: ``question_id`` when it is unique in the file (the published file); a copy whose
``question_id`` restarts in each category is keyed by ``category/question_id``, and one where even
that repeats by line number (``line-N``), so that predictions stay keyed one per question.

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
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import locate, read_json_records

NAME = "vstar"
SUBSETS = ("direct_attributes", "relative_position")
SPLITS = ("all", *SUBSETS)
DEFAULT_SPLIT = "all"

PROTOCOL = Protocol(
    prompt="the record's text as published: question, (A)... options, the letter instruction",
    extraction="generated answer: the option letter (letter, answer phrase, then option text; answers.py)",
    metrics="accuracy overall and per subset (direct_attributes, relative_position)",
    source="penghao-wu/vstar: vstar_bench_eval.py",
    departures=("the official script picks the option of highest likelihood; we score the generated answer",),
)

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
    records = list(read_json_records(path))
    ids = item_ids(records)
    for number, (record, item_id) in enumerate(zip(records, ids), start=1):
        for key in ("image", "text", "label"):
            if key not in record:
                hint = (
                    " (an early release without answers; download the current one)" if key == "label" else ""
                )
                raise DataError(f"{path}: record {number} has no {key!r}{hint}")
        category = _category(record)
        if split != "all" and category != split:
            continue
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


def _category(record: dict) -> str:
    return str(record.get("category") or Path(str(record.get("image", ""))).parts[0])


def item_ids(records: list[dict]) -> list[str]:
    """One id per record: ``question_id`` when unique, else ``category/question_id`` when that is,
    else ``line-N`` (records without a ``question_id`` count by line).

    >>> item_ids([{"question_id": 0, "category": "a"}, {"question_id": 1, "category": "b"}])
    ['0', '1']
    >>> item_ids([{"question_id": 0, "category": "a"}, {"question_id": 0, "category": "b"}])
    ['a/0', 'b/0']
    >>> item_ids([{"question_id": 0, "category": "a"}, {"question_id": 0, "category": "a"}])
    ['line-1', 'line-2']
    """
    plain = [str(r.get("question_id", n)) for n, r in enumerate(records)]
    if len(set(plain)) == len(plain):
        return plain
    paired = [f"{_category(r)}/{qid}" for r, qid in zip(records, plain)]
    if len(set(paired)) == len(paired):
        return paired
    return [f"line-{n}" for n in range(1, len(records) + 1)]


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """Overall accuracy (with a 95% Wilson interval) and ``accuracy/<subset>``."""
    return accuracy_summary([r.correct for r in results], [r.groups.get("category", "") for r in results])
