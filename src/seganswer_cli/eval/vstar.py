"""V* Bench (Wu & Xie, 2024): 191 multiple-choice questions about small details in large images.

Data (``--data``): the ``vstar_bench`` folder as published (``craigwu/vstar_bench``)::

    vstar_bench/
      test_questions.jsonl      {"image": "direct_attributes/sa_4690.jpg", "text": "What is ...?\\n(A) ...\\n
                                 (B) ...\\nAnswer with the option's letter from the given choices directly.",
                                 "category": "direct_attributes", "question_id": 0, "label": "A"}
      direct_attributes/        115 images + one annotation each: sa_4690.json {"question", "options":
      relative_position/        76 images    [the right one first, ...], "target_object", "bbox"}

The jsonl is read when present, else lmms-lab's parquet copy (``lmms-lab/vstar-bench``:
``data/test-*.parquet``, the jsonl's ``text, label, category, question_id`` with the image in the row,
read by ``hub_copies.py``). A copy with neither (the layout the official ``vstar_bench_eval.py``
reads) is read from the per-image annotations, whose ``options`` list the right answer first: there
the options are put in a seeded order per question (``option_order``), so the right one is not always
``(A)``, a position a model can learn or be biased toward (scores rise several points when it is).

Ids: jsonl ``question_id`` when it is unique in the file (the published file); a copy whose
``question_id`` restarts in each category is keyed by ``category/question_id``, and one where even
that repeats by line number (``line-N``). Annotation copies are keyed ``category/<image stem>``.

``option_order`` (``seganswer eval vstar --option-order``): ``shuffled`` (default: the jsonl's
published order, or the seeded order above) or ``fixed`` (the right option first, as the
annotations list it: to measure a model's position bias, never to report).

``--protocol likelihood`` follows the official script: the model is asked the question alone, takes
its second look, and each option's text is scored as its final answer (``<answer> text </answer>.``,
mean negative log-likelihood of that turn's tokens, ``reasoning.answer_nll``); the lowest wins.

Prompt (the default, ``generate``): the record's ``text`` unchanged; V*'s layout (question, ``(A) ...`` lines, the letter
instruction) when the options were reordered or came from an annotation. Score: the extracted option
letter equals the right one. Metrics: accuracy per subset and overall (``--split direct_attributes``
or ``relative_position`` evaluates one subset).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.answers import score_sample
from seganswer_cli.eval.hub_copies import HubCopy, locate_or_copy, read_copy
from seganswer_cli.eval.items import BenchmarkData, EvalItem, ImageRef, MissingImage, SampleResult, find_file
from seganswer_cli.eval.metrics import accuracy_summary
from seganswer_cli.eval.multiple_choice import split_inline_options
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import candidate_folders, read_json_records, read_text
from seganswer_cli.model.conversation import lettered, llava_prompt

NAME = "vstar"
SUBSETS = ("direct_attributes", "relative_position")
SPLITS = ("all", *SUBSETS)
DEFAULT_SPLIT = "all"
OPTION_ORDERS = ("shuffled", "fixed")
#: How answers are read (``seganswer eval vstar --protocol``): ``generate`` (the default: the answer the
#: model writes, from the prompt with the options) or ``likelihood`` (the official script's: the question
#: alone, then each option scored as the final answer, the one of lowest mean loss chosen).
PROTOCOL_VARIANTS = ("generate", "likelihood")
#: lmms-lab's parquet copy: the jsonl's records with the image inside each row.
HUB_COPY = HubCopy("lmms-lab/vstar-bench", ("data/test-*.parquet", "data/*.parquet", "*.parquet"),
                   ("text", "label", "category", "question_id"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

PROTOCOL = Protocol(
    prompt="the record's text as published: question, (A)... options, the letter instruction",
    extraction="generated answer: the option letter (letter, answer phrase, then option text; answers.py)",
    metrics="accuracy overall and per subset (direct_attributes, relative_position)",
    source="penghao-wu/vstar: vstar_bench_eval.py",
    departures=(
        "by default we score the generated answer; --protocol likelihood scores the options as the "
        "official script does, after the model's own second look",
        "annotation-only copies list the right option first; we put options in a seeded order per question",
    ),
)

score = score_sample


def read(root: Path, split: str | None = None, *, option_order: str = "shuffled") -> BenchmarkData:
    """Items of ``split`` (``all`` or one subset) from ``test_questions.jsonl``, else from lmms-lab's
    parquet copy, else from the per-image annotations of the subset folders."""
    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise UsageError(f"{NAME}: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if option_order not in OPTION_ORDERS:
        raise UsageError(f"{NAME}: unknown option order {option_order!r}; choose from {', '.join(OPTION_ORDERS)}")
    try:
        found = locate_or_copy(root, ["test_questions.jsonl"], HUB_COPY, NAME)
    except DataError:
        annotated = _annotation_folders(Path(root))
        if annotated is None:
            raise
        return _read_annotations(annotated, split, option_order)
    if isinstance(found, Path):
        folders = [found.parent, Path(root)]
        return _read_records(read_json_records(found), str(found), split, option_order,
                             lambda record: find_file(record["image"], folders), tuple(str(f) for f in folders))
    # the copy's rows carry their image (a LazyImage) where the jsonl names a file
    return _read_records(read_copy(found, HUB_COPY), ", ".join(str(f) for f in found), split, option_order,
                         lambda row: row["image"], ())


def _read_records(records: list[dict], source: str, split: str, option_order: str,
                  image_of: Callable[[dict], ImageRef | None], looked_in: tuple[str, ...]) -> BenchmarkData:
    """Items from jsonl records (or the copy's rows, the same fields); ``image_of(record)`` is the
    record's image, ``None`` when it is missing."""
    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    ids = item_ids(records)
    for number, (record, item_id) in enumerate(zip(records, ids), start=1):
        for key in ("image", "text", "label"):
            if key not in record:
                hint = (
                    " (an early release without answers; download the current one)" if key == "label" else ""
                )
                raise DataError(f"{source}: record {number} has no {key!r}{hint}")
        category = _category(record)
        if split != "all" and category != split:
            continue
        question, options = split_inline_options(str(record["text"]))
        answer = str(record["label"]).strip().strip("()").upper()
        if not options or answer not in options:
            raise DataError(f"{source}: record {number} lists no '(A) ...' options with its label {answer!r}")
        prompt = str(record["text"]).strip()
        if option_order == "fixed":
            texts = [options[answer], *(t for k, t in options.items() if k != answer)]
            options, answer = lettered(texts), "A"
            prompt = llava_prompt(question, options)
        image = image_of(record)
        if image is None:
            missing.append(MissingImage(item_id, str(record["image"]), looked_in))
            continue
        items.append(EvalItem(id=item_id, benchmark=NAME, image=image, question=question, prompt=prompt,
                              answer=answer, options=options, groups={"category": category}))
    return BenchmarkData(items, missing, source=source)


def _annotation_folders(root: Path) -> Path | None:
    """The folder holding ``direct_attributes/`` and ``relative_position/`` with ``*.json`` annotations."""
    if not root.is_dir():
        return None
    for folder in candidate_folders(root):
        if any((folder / subset).is_dir() and any((folder / subset).glob("*.json")) for subset in SUBSETS):
            return folder
    return None


def _read_annotations(folder: Path, split: str, option_order: str) -> BenchmarkData:
    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    for subset in SUBSETS if split == "all" else (split,):
        for path in sorted((folder / subset).glob("*.json")):
            record = _annotation(path)
            choices = record.get("options")
            if "question" not in record or not isinstance(choices, list) or len(choices) < 2:
                raise DataError(f"{path}: expected an annotation with 'question' and a list of 'options'")
            item_id = f"{subset}/{path.stem}"
            order = _option_permutation(item_id, len(choices)) if option_order == "shuffled" else range(len(choices))
            options = lettered([str(choices[i]) for i in order])
            answer = "ABCDEFGHIJ"[list(order).index(0)]
            image = next((p for p in (path.with_suffix(s) for s in IMAGE_SUFFIXES) if p.is_file()), None)
            if image is None:
                missing.append(MissingImage(item_id, f"{subset}/{path.stem}.jpg", (str(folder / subset),)))
                continue
            question = str(record["question"]).strip()
            items.append(EvalItem(id=item_id, benchmark=NAME, image=image, question=question,
                                  prompt=llava_prompt(question, options), answer=answer, options=options,
                                  groups={"category": subset}))
    return BenchmarkData(items, missing, source=f"{folder} (per-image annotations, options {option_order})")


def _annotation(path: Path) -> dict:
    """One per-image annotation: a JSON object, pretty-printed or not."""
    try:
        record = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected one JSON object (an annotation), got {type(record).__name__}")
    return record


def _option_permutation(item_id: str, n: int) -> list[int]:
    """A fixed order of ``n`` options for the question ``item_id``: the same on every machine and run
    (seeded by the id's CRC-32, not Python's salted ``hash``).

    >>> _option_permutation("direct_attributes/sa_4690", 4) == _option_permutation("direct_attributes/sa_4690", 4)
    True
    >>> sorted(_option_permutation("relative_position/sa_1", 2))
    [0, 1]
    """
    rng = np.random.default_rng(zlib.crc32(item_id.encode("utf-8")))
    return [int(i) for i in rng.permutation(n)]


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
