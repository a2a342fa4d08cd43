"""POPE (Li et al., 2023): "Is there a <object> in the image?" on COCO val2014, three sampling settings.

Data (``--data``): the folder holding the three question files and the images they name::

    pope/
      coco_pope_random.json        JSON lines: {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
      coco_pope_popular.json                    "text": "Is there a snowboard in the image?", "label": "yes"}
      coco_pope_adversarial.json
      val2014/                     (or the images next to the files, or ``images/``, or ``coco/val2014/``)

Parquet copy (when the question files are absent): ``lmms-lab/POPE``, ``data/test-*.parquet`` (or its
``Full/<setting>-*.parquet``), columns ``question_id, question, answer, image, category`` (the setting),
read by ``hub_copies.py``; the same ids, prompts and answers as the question files.

``--split`` is ``random``, ``popular``, ``adversarial`` or ``all`` (default: the three together; ids are
prefixed with the setting since each file numbers its questions from 1).

Prompt: the question, then "Please answer yes or no."  Extraction is POPE's official rule
(``evaluate.py``), applied to the answer ``conversation.answer_of`` reads from the last model turn
(the ``<answer>`` content, else the turn's text): keep the text before the first ``.``, drop commas,
split on spaces; ``No``, ``no`` or ``not`` among the words -> ``no``, anything else -> ``yes``
(rule ``<source>:pope_official``). So "Yes, but there is no dog" is ``no`` and "There is a cat" is
``yes``, as the official script counts them. One departure: an output with no answer at all (an
unfinished reasoning turn) is wrong, where the official script, which has no turns, would call it
``yes``. Metrics per setting (accuracy, precision, recall, F1, yes-ratio, ``yes`` positive) and
their mean over the settings evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval.hub_copies import HubCopy, locate_or_copy, read_copy
from seganswer_cli.eval.items import BenchmarkData, EvalItem, ImageRef, MissingImage, SampleResult, find_file
from seganswer_cli.eval.metrics import pope_metrics
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import candidate_folders, locate, read_json_records
from seganswer_cli.model.conversation import YES_NO_INSTRUCTION, answer_of

NAME = "pope"
SETTINGS = ("random", "popular", "adversarial")
SPLITS = ("all", *SETTINGS)
DEFAULT_SPLIT = "all"

PROTOCOL = Protocol(
    prompt="the question, then 'Please answer yes or no.'",
    extraction="the official rule on the answer: 'No'/'no'/'not' in its first sentence -> no, else yes",
    metrics="accuracy, precision, recall, F1, yes-ratio per setting (yes positive); their mean over settings",
    source="RUCAIBox/POPE: evaluate.py",
    departures=("an output with no answer (an unfinished turn) is wrong; the official script would read it as yes",),
)
INSTRUCTION = YES_NO_INSTRUCTION
HUB_COPY = HubCopy(
    "lmms-lab/POPE",
    ("data/test-*.parquet", "Full/*.parquet", "test-*.parquet", "*.parquet"),
    ("question_id", "question", "answer", "category"),
)


def read(root: Path, split: str | None = None) -> BenchmarkData:
    """Items of one setting or all three from the folder holding ``coco_pope_<setting>.json``."""
    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise UsageError(f"{NAME}: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    settings = SETTINGS if split == "all" else (split,)
    found = locate_or_copy(root, _file_names(settings[0]), HUB_COPY, NAME)
    if not isinstance(found, Path):
        return _read_copy(found, settings)
    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    sources = []
    for setting in settings:
        path = locate(root, _file_names(setting), NAME)
        sources.append(str(path))
        folders = []
        for base in dict.fromkeys([path.parent, *candidate_folders(Path(root))]):
            folders += [base, base / "val2014", base / "images", base / "coco" / "val2014"]
        for number, record in enumerate(read_json_records(path), start=1):
            label = _label(record.get("label"))
            if label is None or "image" not in record or "text" not in record:
                raise DataError(f"{path}: record {number} needs 'image', 'text' and a yes/no 'label'")
            item_id = f"{setting}-{record.get('question_id', number)}"
            image = find_file(record["image"], folders)
            if image is None:
                missing.append(MissingImage(item_id, record["image"], tuple(str(f) for f in folders)))
                continue
            items.append(_item(item_id, setting, record["text"], label, image))
    return BenchmarkData(items, missing, source=", ".join(sources))


def _file_names(setting: str) -> list[str]:
    return [f"coco_pope_{setting}.json", f"coco_pope_{setting}.jsonl"]


def _read_copy(files: list[Path], settings: tuple[str, ...]) -> BenchmarkData:
    """Items of ``settings`` from lmms-lab's rows, in the question files' order (setting by setting)."""
    items: list[EvalItem] = []
    for number, row in enumerate(read_copy(files, HUB_COPY), start=1):
        setting, label = str(row["category"]).strip().lower(), _label(row["answer"])
        if setting not in SETTINGS or label is None:
            raise DataError(
                f"{files[0]}: row {number} needs a category among {', '.join(SETTINGS)} and a yes/no answer; "
                f"got {row['category']!r}, {row['answer']!r}"
            )
        if setting in settings:
            items.append(_item(f"{setting}-{row['question_id']}", setting, row["question"], label, row["image"]))
    items.sort(key=lambda item: SETTINGS.index(item.groups["setting"]))
    return BenchmarkData(items, [], source=", ".join(str(f) for f in files))


def _label(value: object) -> str | None:
    label = str(value or "").strip().lower()
    return label if label in ("yes", "no") else None


def _item(item_id: str, setting: str, text: str, label: str, image: ImageRef) -> EvalItem:
    question = str(text).strip()
    return EvalItem(
        id=item_id,
        benchmark=NAME,
        image=image,
        question=question,
        prompt=f"{question}\n{INSTRUCTION}",
        answer=label,
        answer_kind="yesno",
        groups={"setting": setting},
    )


def official_answer(text: str) -> str:
    """POPE's ``evaluate.py`` rule: ``no`` when the first sentence has the word ``No``, ``no`` or ``not``.

    >>> [official_answer(t) for t in ("Yes, there is.", "Yes, but there is no dog.", "There is a cat", "No.")]
    ['yes', 'no', 'yes', 'no']
    >>> official_answer("Not really")  # only the exact words No, no, not count, as in the official script
    'yes'
    """
    first_sentence = text.split(".")[0] if "." in text else text
    words = first_sentence.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def score(prediction_text: str, item: EvalItem) -> SampleResult:
    """The official yes/no of the answer; correct when it equals the label. No answer: wrong, rule ``none``."""
    answer = answer_of(prediction_text)
    value = None if answer.value is None else official_answer(answer.value)
    return SampleResult(
        id=item.id,
        correct=value == item.answer,
        extracted=value,
        rule="none" if value is None else f"{answer.source}:pope_official",
        answer=item.answer,
        groups=dict(item.groups),
    )


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """``<setting>/<metric>`` for each setting present, and ``<metric>`` averaged over them."""
    summary: dict[str, float] = {}
    present = [s for s in SETTINGS if any(r.groups.get("setting") == s for r in results)]
    for setting in present:
        subset = [r for r in results if r.groups.get("setting") == setting]
        for metric, value in pope_metrics([r.extracted for r in subset], [r.answer for r in subset]).items():
            summary[f"{setting}/{metric}"] = value
    for metric in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        values = [summary[f"{s}/{metric}"] for s in present]
        summary[metric] = sum(values) / len(values) if values else float("nan")
    summary["unanswered"] = float(sum(summary[f"{s}/unanswered"] for s in present))
    summary["n"] = float(len(results))
    return summary
