"""POPE (Li et al., 2023): "Is there a <object> in the image?" on COCO val2014, three sampling settings.

Data (``--data``): the folder holding the three question files and the images they name::

    pope/
      coco_pope_random.json        JSON lines: {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
      coco_pope_popular.json                    "text": "Is there a snowboard in the image?", "label": "yes"}
      coco_pope_adversarial.json
      val2014/                     (or the images next to the files, or ``images/``, or ``coco/val2014/``)

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
from seganswer_cli.eval.items import BenchmarkData, EvalItem, MissingImage, SampleResult, find_file
from seganswer_cli.eval.metrics import pope_metrics
from seganswer_cli.eval.protocol import Protocol
from seganswer_cli.eval.reading import candidate_folders, locate, read_json_records
from seganswer_cli.model.conversation import answer_of

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
INSTRUCTION = "Please answer yes or no."


def read(root: Path, split: str | None = None) -> BenchmarkData:
    """Items of one setting or all three from the folder holding ``coco_pope_<setting>.json``."""
    split = split or DEFAULT_SPLIT
    if split not in SPLITS:
        raise UsageError(f"{NAME}: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    settings = SETTINGS if split == "all" else (split,)
    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    sources = []
    for setting in settings:
        path = locate(root, [f"coco_pope_{setting}.json", f"coco_pope_{setting}.jsonl"], NAME)
        sources.append(str(path))
        folders = []
        for base in dict.fromkeys([path.parent, *candidate_folders(Path(root))]):
            folders += [base, base / "val2014", base / "images", base / "coco" / "val2014"]
        for number, record in enumerate(read_json_records(path), start=1):
            label = str(record.get("label", "")).strip().lower()
            if label not in ("yes", "no") or "image" not in record or "text" not in record:
                raise DataError(f"{path}: record {number} needs 'image', 'text' and a yes/no 'label'")
            item_id = f"{setting}-{record.get('question_id', number)}"
            image = find_file(record["image"], folders)
            if image is None:
                missing.append(MissingImage(item_id, record["image"], tuple(str(f) for f in folders)))
                continue
            question = str(record["text"]).strip()
            items.append(
                EvalItem(
                    id=item_id,
                    benchmark=NAME,
                    image=image,
                    question=question,
                    prompt=f"{question}\n{INSTRUCTION}",
                    answer=label,
                    answer_kind="yesno",
                    groups={"setting": setting},
                )
            )
    return BenchmarkData(items, missing, source=", ".join(sources))


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
