"""Contact sheets of answered questions: the first N right and N wrong trajectories of question runs,
redrawn from their run folders without the model (``seganswer eval sheet``).

A run folder has all it takes: ``run.json`` names the benchmark, split and data, so the questions and
their images are read again as the runner read them (the shapes benchmarks regenerate theirs from the
held-out seed); ``predictions.jsonl`` holds each question's ``<|seg|>`` steps with the mask as COCO
RLE. The second look is rebuilt by ``sparse_patches.build_segmented_view`` from the image, the mask,
the run's ``--roi`` and the model's view settings (``run.json``'s ``model_info.view``), as
``SegAnswerModel.second_look`` builds it: the same crop, background and kept cells (the rebuilt token
count is checked against the recorded one). It needs only the model's image processor: a small JSON
file in a model folder, or built in code for the presets without weights; no weights are loaded. When
even that is not at hand (a hub model missing from the local cache) the crop box recorded in the
prediction is drawn instead, background painted for ``--roi mask``, and the caption says so.

Layout. Several runs of the same questions (same benchmark, split and data; e.g. one per ``--roi``)
are compared: one row per question, one column per run, the rows being the *first* run's first N
right then first N wrong answers in item order, so the other columns show how the other runs did on
the same questions. Otherwise (one run, runs of different questions, or ``columns`` given) each run's
picks, right ones then wrong ones, fill a plain grid of ``columns`` tiles per row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seganswer_cli.errors import DataError, UsageError, read_json
from seganswer_cli.eval import get_benchmark
from seganswer_cli.eval.items import EvalItem
from seganswer_cli.eval.runner import PREDICTIONS, RUN_FILE, read_predictions

#: Tiles per row of a plain grid when ``columns`` is not given.
DEFAULT_COLUMNS = 4


@dataclass
class Answered:
    """One evaluated question of a run: where it stands in the benchmark, the item and its prediction."""

    index: int
    """Position in the benchmark's item order (the number in ``vis/`` file names)."""
    item: EvalItem
    record: dict[str, Any]
    """Its ``predictions.jsonl`` line."""


@dataclass
class QuestionRun:
    """A question run folder read back: its settings, model card and answered questions in item order."""

    folder: Path
    settings: dict[str, Any]
    model_info: dict[str, Any]
    answered: list[Answered]

    @property
    def label(self) -> str:
        oracle = ", ground-truth masks" if self.settings.get("masks") == "gt" else ""
        return f"{self.folder.name} (roi {self.settings.get('roi')}{oracle})"

    @property
    def questions(self) -> tuple:
        """What decides the questions: runs with equal ``questions`` can be compared row by row."""
        return tuple(self.settings.get(k) for k in ("benchmark", "split", "data"))

    def pick(self, right: int, wrong: int) -> list[Answered]:
        """The first ``right`` correct and the first ``wrong`` incorrect answers, in item order."""
        rights = [a for a in self.answered if a.record.get("correct")][:right]
        wrongs = [a for a in self.answered if not a.record.get("correct")][:wrong]
        return rights + wrongs


def open_question_run(folder: Path) -> QuestionRun:
    """Read a question run folder and the benchmark's items it answered.

    ``DataError`` when the folder is not an eval run or holds no prediction, or when its predictions
    no longer match the benchmark's items; ``UsageError`` for a segmentation run.
    """
    folder = Path(folder)
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        raise DataError(f"{folder}: not a seganswer eval run folder (no {RUN_FILE})")
    info = read_json(run_file)
    settings = info.get("settings") or {}
    spec = get_benchmark(str(settings.get("benchmark")))
    if spec.task != "qa":
        raise UsageError(f"{folder} is a {spec.name} run (referring segmentation); eval sheet draws question runs")
    records = read_predictions(folder / PREDICTIONS, repair=False)
    if not records:
        raise DataError(f"{folder}: no predictions yet ({PREDICTIONS} missing or empty)")

    data = settings.get("data")
    root = Path(data) if data and Path(data).exists() else None
    if root is None and not spec.generates:
        raise DataError(f"{folder}: the run's data folder {data} is not there any more")
    # Generated questions: the run answered a prefix (--limit, resumed in order), so generate only that.
    attempts = [{"limit": len(records)}, {}] if root is None else [{}]
    for kwargs in attempts:
        items = spec.read(root, settings.get("split"), **kwargs).items
        answered = [Answered(i, item, records[item.id]) for i, item in enumerate(items) if item.id in records]
        if len(answered) == len(records):
            break
    else:
        known = {a.item.id for a in answered}
        first = next(i for i in records if i not in known)
        raise DataError(f"{folder}: {len(records) - len(answered)} prediction(s) are not questions of "
                        f"{spec.name} as read now (first: {first!r}); did the data change after the run?")
    return QuestionRun(folder, settings, info.get("model_info") or {}, answered)


def image_processor_for(model: str, model_info: dict[str, Any]):
    """The run's model's image processor, without its weights: the model folder's
    ``preprocessor_config.json``, a preset's built in code (presets without weights), or a hub
    model's from the local cache. ``None`` when none of these is at hand."""
    from transformers import AutoImageProcessor

    from seganswer_cli.model.presets import PRESETS

    folder = Path(model) / "mllm"
    try:
        if folder.is_dir():
            return AutoImageProcessor.from_pretrained(folder)
        preset = PRESETS.get(model) or PRESETS.get(str(model_info.get("preset")))
        if preset is None:
            return None
        if preset.mllm is None:
            from seganswer_cli.model.mllm import build_tiny_image_processor

            pixels = {k: v for k, v in preset.tiny_mllm.items() if k in ("min_pixels", "max_pixels")}
            return build_tiny_image_processor(backbone=preset.backbone, **pixels)
        return AutoImageProcessor.from_pretrained(preset.mllm, local_files_only=True)
    except (OSError, ValueError):
        return None


def _box_crop(image: Image.Image, step, roi: str, background) -> Image.Image:
    """Without an image processor: the recorded crop box, pixels outside the mask painted for roi mask."""
    if step.fallback or step.box is None:
        return image.convert("RGB")
    x0, y0, x1, y1 = step.box
    crop = np.array(image.convert("RGB"))[y0:y1, x0:x1]  # (h, w, 3)
    if roi == "mask":
        crop[~step.mask[y0:y1, x0:x1]] = background
    return Image.fromarray(crop)


def question_tile(run: QuestionRun, answered: Answered, image_processor):
    """The ``viz.TrajectoryTile`` of one answered question: image, masks, second look, question, answers."""
    from seganswer_cli.masks import decode_rle
    from seganswer_cli.model.presets import ViewConfig
    from seganswer_cli.model.sparse_patches import second_look_view
    from seganswer_cli.reasoning import SegStep
    from seganswer_cli.viz import TrajectoryTile, kept_cells_view

    item, record = answered.item, answered.record
    if record.get("question") not in (None, item.question):
        raise DataError(f"{run.folder}: question {item.id!r} reads {item.question!r} now but "
                        f"{record['question']!r} in the run; did the data change after the run?")
    image = item.load_image()
    steps = []
    for step in record.get("steps") or []:
        mask = decode_rle(step["mask"]) if step.get("mask") else None
        if mask is not None and mask.shape != (image.height, image.width):
            raise DataError(f"{run.folder}: the mask of {item.id!r} is {mask.shape[0]}x{mask.shape[1]} but its "
                            f"image is {image.height}x{image.width}; did the data change after the run?")
        box = tuple(step["crop_box"]) if step.get("crop_box") else None
        steps.append(SegStep(mask, step.get("iou") or 0.0, step.get("object_score") or 0.0,
                             kept_tokens=int(step.get("kept_tokens") or 0), box=box, fallback=step.get("fallback")))

    roi = run.settings.get("roi")
    second_look, caption = None, "no <|seg|>: answered from the first look"
    if roi == "none":
        caption = "no second look (--roi none)"
    elif steps and steps[0].mask is not None:
        first = steps[0]
        note = (f", {first.fallback}" if first.fallback else "") + (
            f", +{len(steps) - 1} more" if len(steps) > 1 else "")
        caption = f"second look: {first.kept_tokens} tokens{note}"
        view_config = ViewConfig.from_dict(run.model_info.get("view") or {})
        if image_processor is None:
            second_look = _box_crop(image, first, roi, view_config.background)
            caption += " (box crop)"
        else:
            view, _ = second_look_view(image, first.mask, image_processor, mode=roi, **asdict(view_config))
            second_look = kept_cells_view(view)
            if view.num_tokens != first.kept_tokens:
                caption += f" (rebuilt: {view.num_tokens})"
    return TrajectoryTile(
        image=image, steps=steps, second_look=second_look, look_caption=caption,
        title=f"#{answered.index} {item.id} | {run.label}", question=item.question,
        gold=_with_option(item.answer, item), answer=_with_option(record.get("extracted"), item),
        correct=bool(record.get("correct")),
    )


def _with_option(answer: str | None, item: EvalItem) -> str:
    """``B (blue)`` for an option letter, the answer itself otherwise, ``(none)`` when there is none."""
    if answer is None or answer == "":
        return "(none)"
    option = item.options.get(str(answer).strip().upper()) if item.options else None
    return f"{answer} ({option})" if option else str(answer)


@dataclass
class ContactSheet:
    """A drawn contact sheet and how it was laid out."""

    image: Image.Image
    layout: str
    """``compare`` (rows = questions, columns = runs) or ``grid``."""
    rows: int
    columns: int
    tiles: int


def contact_sheet_of_runs(folders: list[Path], *, right: int = 4, wrong: int = 4,
                          columns: int | None = None) -> ContactSheet:
    """Draw the first ``right`` correct and ``wrong`` incorrect answers of question run folders
    (laid out as the module docstring says). ``UsageError`` / ``DataError`` on bad input, before drawing."""
    from seganswer_cli.viz import contact_sheet

    if right < 0 or wrong < 0:
        raise UsageError("--right and --wrong must be >= 0")
    if right + wrong == 0:
        raise UsageError("--right and --wrong are both 0: nothing to draw")
    if columns is not None and columns < 1:
        raise UsageError("--columns must be >= 1")
    if not folders:
        raise UsageError("give at least one run folder")
    runs = [open_question_run(folder) for folder in folders]
    processors: dict[str, Any] = {}

    def tile(run: QuestionRun, answered: Answered | None):
        if answered is None:
            return None
        model = str(run.settings.get("model"))
        if model not in processors:
            processors[model] = image_processor_for(model, run.model_info)
        return question_tile(run, answered, processors[model])

    compare = columns is None and len(runs) > 1 and len({run.questions for run in runs}) == 1
    if compare:
        picks = runs[0].pick(right, wrong)
        by_id = [{a.item.id: a for a in run.answered} for run in runs]
        rows = [[tile(run, ids.get(p.item.id)) for run, ids in zip(runs, by_id)] for p in picks]
        titles = [f"{run.label}: {sum(bool(a.record.get('correct')) for a in run.answered)}/{len(run.answered)} right"
                  for run in runs]
    else:
        tiles = [tile(run, a) for run in runs for a in run.pick(right, wrong)]
        width = columns or DEFAULT_COLUMNS
        rows = [tiles[i : i + width] for i in range(0, len(tiles), width)]
        titles = None
    if not rows:
        raise DataError(f"nothing to draw: no {'right' if right else 'wrong'} answers in "
                        f"{', '.join(str(f) for f in folders)} (--right {right} --wrong {wrong})")
    width = max(len(row) for row in rows)
    return ContactSheet(contact_sheet(rows, titles), "compare" if compare else "grid", len(rows), width,
                        sum(t is not None for row in rows for t in row))
