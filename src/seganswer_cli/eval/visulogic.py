"""VisuLogic (Xu et al., 2025): 1,000 visual-logic puzzles, four choices, one image each.

Data (``--data``): the folder as published (``VisuLogic/VisuLogic``), ``images.zip`` unpacked::

    VisuLogic/
      data.jsonl    {"id": "00000", "image_path": "images/00000.png", "question": "...\\nA: ...\\nB: ...",
                     "label": "A", "tag": "Quantitative Reasoning"}
      images/       00000.png ...

The options (often drawn inside the image) are part of ``question``; when the question does not list
them as text, the options are the bare letters A-D.

Prompt: the question, then "Answer with the option's letter from the given choices directly."
Score: the extracted letter equals ``label`` (the official harness also reads ``\\boxed{X}``, which the
``answer_prefix`` rule covers). Metrics: accuracy overall and per ``tag`` (reasoning type).
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
from seganswer_cli.model.conversation import LLAVA_INSTRUCTION

NAME = "visulogic"
SPLITS = ("test",)
DEFAULT_SPLIT = "test"

PROTOCOL = Protocol(
    prompt="the question, then 'Answer with the option's letter from the given choices directly.'",
    extraction="the option letter (letter, answer phrase or \\boxed{X}; answers.py)",
    metrics="accuracy overall and per tag",
    source="VisuLogic-Benchmark/VisuLogic-Eval",
)
LETTERS = ("A", "B", "C", "D")

score = score_sample


def read(root: Path, split: str | None = None) -> BenchmarkData:
    """Items from the folder holding ``data.jsonl`` and ``images/``."""
    if (split or DEFAULT_SPLIT) not in SPLITS:
        raise UsageError(f"{NAME}: VisuLogic has one split, 'test'; got {split!r}")
    path = locate(root, ["data.jsonl", "*.jsonl"], NAME)
    folders = [path.parent, path.parent / "images", Path(root)]
    items: list[EvalItem] = []
    missing: list[MissingImage] = []
    for number, record in enumerate(read_json_records(path), start=1):
        answer = str(record.get("label", record.get("answer", ""))).strip().upper()
        image_name = record.get("image_path") or record.get("image")
        if "question" not in record or not image_name or answer not in LETTERS:
            raise DataError(f"{path}: record {number} needs 'question', 'image_path' and a 'label' in A-D")
        item_id = str(record.get("id", number - 1))
        question_text = str(record["question"]).strip()
        _, listed = split_inline_options(question_text)
        options = listed if len(listed) >= 2 else {letter: letter for letter in LETTERS}
        image = find_file(image_name, folders)
        if image is None:
            missing.append(MissingImage(item_id, str(image_name), tuple(str(f) for f in folders)))
            continue
        items.append(
            EvalItem(
                id=item_id,
                benchmark=NAME,
                image=image,
                question=question_text,
                prompt=f"{question_text}\n{LLAVA_INSTRUCTION}",
                answer=answer,
                options=options,
                groups={"tag": str(record.get("tag", ""))},
            )
        )
    return BenchmarkData(items, missing, source=str(path))


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """Accuracy (95% Wilson interval) overall and ``accuracy/<tag>``."""
    return accuracy_summary([r.correct for r in results], [r.groups.get("tag", "") for r in results])
