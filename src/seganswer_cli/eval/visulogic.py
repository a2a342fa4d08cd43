"""VisuLogic (Xu et al., 2025): 1,000 visual-logic puzzles, four choices, one image each.

Data (``--data``): the folder as published (``VisuLogic/VisuLogic``), with ``images.zip`` unpacked or
not (images are then read from the archive, one at a time, as items are evaluated)::

    VisuLogic/
      data.jsonl    {"id": "00000", "image_path": "images/00000.png", "question": "...\\nA: ...\\nB: ...",
                     "label": "A", "tag": "Quantitative Reasoning"}
      images/       00000.png ...      (or images.zip holding images/00000.png ...)

The options (often drawn inside the image) are part of ``question``; when the question does not list
them as text, the options are the bare letters A-D.

Prompt, as the official ``VisuLogic-Eval`` (``models/prompts.py``): the question, then "Solve the
complex visual logical reasoning problem through step-by-step reasoning. Think about the reasoning
process first and answer the question following this format: Answer: \\boxed{$LETTER}." Score: the
extracted letter equals ``label``; the official extractor reads the last ``\\boxed{X}``, then phrases such
as "the answer is X", then asks a judge model; the ``letter`` and ``answer_prefix`` rules of answers.py
read the first two, ``--judge`` adds the third. Metrics: accuracy overall and per ``tag``.
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
from seganswer_cli.eval.reading import ZipImages, locate, read_json_records

NAME = "visulogic"
SPLITS = ("test",)
DEFAULT_SPLIT = "test"

PROTOCOL = Protocol(
    prompt="the question, then the official step-by-step instruction ending 'Answer: \\boxed{$LETTER}.'",
    extraction="the option letter: \\boxed{X}, a letter, or an answer phrase (answers.py); judge as fallback",
    metrics="accuracy overall and per tag",
    source="VisuLogic-Benchmark/VisuLogic-Eval: evaluation/eval_model.py, models/prompts.py",
    judge="fallback",
)
LETTERS = ("A", "B", "C", "D")
#: The official instruction (VisuLogic-Eval, ``models/prompts.py``); ``$LETTER`` is literal, as there.
INSTRUCTION = (
    "Solve the complex visual logical reasoning problem through step-by-step reasoning. Think about the "
    "reasoning process first and answer the question following this format: Answer: \\boxed{$LETTER}."
)

score = score_sample


def read(root: Path, split: str | None = None) -> BenchmarkData:
    """Items from the folder holding ``data.jsonl`` and ``images/``."""
    if (split or DEFAULT_SPLIT) not in SPLITS:
        raise UsageError(f"{NAME}: VisuLogic has one split, 'test'; got {split!r}")
    path = locate(root, ["data.jsonl", "*.jsonl"], NAME)
    folders = [path.parent, path.parent / "images", Path(root)]
    archive = next((ZipImages(z) for z in (path.parent / "images.zip", Path(root) / "images.zip") if z.is_file()),
                   None)
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
        image = find_file(image_name, folders) or (archive.find(image_name) if archive else None)
        if image is None:
            looked = (*folders, *([archive.path] if archive else []))
            missing.append(MissingImage(item_id, str(image_name), tuple(str(f) for f in looked)))
            continue
        items.append(
            EvalItem(
                id=item_id,
                benchmark=NAME,
                image=image,
                question=question_text,
                prompt=f"{question_text}\n{INSTRUCTION}",
                answer=answer,
                options=options,
                groups={"tag": str(record.get("tag", ""))},
            )
        )
    return BenchmarkData(items, missing, source=str(path))


def summarize(results: Sequence[SampleResult]) -> dict[str, float]:
    """Accuracy (95% Wilson interval) overall and ``accuracy/<tag>``."""
    return accuracy_summary([r.correct for r in results], [r.groups.get("tag", "") for r in results])
