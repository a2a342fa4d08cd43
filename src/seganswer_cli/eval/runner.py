"""Running a benchmark: items through the model, one prediction line each, resumable.

Question-answering benchmarks go through the reasoning loop (``reasoning.ReasoningLoop.stream``, greedy,
the item's ``prompt`` as the question): ``--batch-size`` questions at a time, a finished question's
slot taken at once by the next one (continuous batching), so a batch never waits for its slowest
question. Referring segmentation goes through ``SegAnswerModel.segment_batch`` (the paper's Stage 1
prompt with the item's expression, one teacher-forced forward per batch). Every scored sample is
appended to ``predictions.jsonl`` as it finishes (in the order they finish), so a killed run loses at
most the questions in flight: the rerun skips the ids already there (a last line cut by the kill is
dropped and redone) and the summary is rebuilt from the file, equal to that of an uninterrupted run.

A sample whose image does not decode (or whose ``--masks gt`` region does not load) does not stop the
run (``on_error="skip"``, the default): it gets a ``failed`` record with the reason (``failed_record``),
is left out of the metrics and counted in the summary, and the next invocation tries it again. With
``on_error="stop"`` no question is asked after it; those already asked finish and are written, then the
run stops with one line naming the sample. ``run.json`` is written only once the model has loaded (``execute``), so an option that fails
(a mistyped ``--model``, ``--batch-size 0``) leaves nothing behind; a non-empty folder that holds no
run is refused.

A run folder (``--out RUN_DIR``)::

    run.json           the settings that define the run (benchmark, split, data, model, roi, token
                       limits, dtype), the model's card and package versions; a rerun into the same
                       folder with other settings is refused
    predictions.jsonl  one JSON object per sample (see ``qa_record`` / ``mask_record`` / ``failed_record``)
    summary.json       metrics, cost (visual tokens of the second look, generated tokens), seconds per
                       sample, counts (items, evaluated, missing images, failed), settings, model, versions,
                       the judge and its counts (``judge``, None without ``--judge``)
    judge_cache.jsonl  with ``--judge``: every judge reply, so a resumed run never asks twice (judge.py)
    vis/               overlays of ``--save-vis N`` samples, named ``<index>_<ok|wrong>_<id>.png``

``--limit`` and ``--batch-size`` are not settings of the run: ``--limit 20`` then no limit resumes
into the same folder. Typical use (what ``seganswer eval`` does)::

    spec = get_benchmark("shapes-vqa")
    data = spec.read(None)
    run = EvalRun.open(spec, data, RunSettings.create(spec, ...), Path("runs/shapes"), limit=20)
    summary = run.execute(lambda: SegAnswerModel.from_pretrained("tiny"), batch_size=8)
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from seganswer_cli import jsonl
from seganswer_cli.data.onerror import OnError, RecordErrors
from seganswer_cli.errors import DataError, UsageError, read_json
from seganswer_cli.eval import BenchmarkSpec
from seganswer_cli.eval import judge as judging
from seganswer_cli.eval.items import BenchmarkData, EvalItem, SampleResult

RUN_FILE = "run.json"
NO_LOOK = "direct"
"""``RunSettings.no_look`` of ``--roi none`` runs: what ``reasoning.ReasoningSettings.roi == "none"`` does."""
PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
VIS_DIR = "vis"
FAILED = "failed"
"""Key of a failed sample's ``predictions.jsonl`` record: why its inputs could not be read."""


@dataclass(frozen=True)
class RunSettings:
    """What decides the predictions of a run; two invocations may share a run folder only if these match."""

    benchmark: str
    """Registry name (``vstar``, ``shapes-vqa``...)."""
    split: str
    """The split evaluated (the benchmark's default when ``--split`` is not given)."""
    data: str
    """The ``--data`` folder as an absolute path, or the description of generated data."""
    model: str
    """The model folder as an absolute path, or a preset name."""
    roi: str | None = "mask"
    """Second look of the reasoning loop: ``mask``, ``bbox`` or ``none`` (None for segmentation)."""
    max_seg_steps: int | None = 1
    """Most ``<|seg|>`` rounds per question (None for segmentation)."""
    max_new_tokens: int | None = 256
    """Most generated tokens per question (None for segmentation)."""
    masks: str | None = "model"
    """Where the second look's mask comes from: ``model`` (SAM 2.1, from the ``<|seg|>`` state) or
    ``gt`` (the question's annotated region: the oracle-grounding ablation); None for segmentation."""
    dtype: str = "auto"
    """Weights dtype the model was loaded in."""
    no_look: str | None = None
    """How ``--roi none`` answers: ``direct`` (the turn opens with ``<answer>`` and ``<|seg|>`` is masked
    out: the answer from the first look); None for the other modes. Folders written before this
    setting ran ``--roi none`` as an empty user turn after ``<|seg|>`` and are not resumed."""
    judge: str | None = None
    """The judge model (``--judge``): an OpenAI-compatible endpoint's base URL or a local model folder
    (absolute); None when answers are read by rules only. See ``judge.JudgeConfig``."""
    judge_model: str | None = None
    """The model name the judge endpoint serves (None for a local folder, or without a judge)."""
    judge_prompt: str | None = None
    """The judge prompts' id and hash (``judge.PROMPT_ID``): reworded prompts are another judge."""
    judge_temperature: float | None = None
    """The judge's sampling temperature (0: greedy)."""

    opening: str | None = None
    """How the model's turns open (``ReasoningSettings.opening``): None for ``model`` (the model
    writes them) and for segmentation; ``forced`` (every ``--roi`` asked the same way)."""
    option_order: str | None = None
    """Order of a multiple-choice benchmark's options where the reader offers a choice (V*:
    ``shuffled`` or ``fixed``); None for the others."""
    protocol: str | None = None
    """How answers are read where a benchmark offers variants (V*: ``generate``, the written answer,
    or ``likelihood``, the options scored as the final answer); None for the others."""

    def __post_init__(self):
        if self.roi == "none" and self.no_look is None:
            object.__setattr__(self, "no_look", NO_LOOK)

    @classmethod
    def create(cls, spec: BenchmarkSpec, data: BenchmarkData, *, data_path: Path | None, split: str | None,
               model: str, judge: judging.JudgeConfig | None = None, **loop: Any) -> RunSettings:
        """Settings with paths made absolute (so a rerun from another folder matches) and the split resolved;
        ``loop`` (roi, masks, max_seg_steps, max_new_tokens; option_order) is the other settings; the loop's
        are dropped for segmentation, which does not use them."""
        if spec.task == "segmentation":
            loop = {**loop, "roi": None, "max_seg_steps": None, "max_new_tokens": None, "masks": None, "opening": None}
        return cls(
            benchmark=spec.name,
            split=split or spec.default_split,
            data=str(data_path.resolve()) if data_path is not None else data.source,
            model=model_setting(model),
            **(judge.settings() if judge is not None else {}),
            **loop,
        )

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """``name: <recorded> there, <self> now`` for every setting that differs from ``recorded``
        (``settings_differences``)."""
        return settings_differences(self, recorded)


def settings_differences(settings: Any, recorded: dict[str, Any]) -> list[str]:
    """``name: <recorded> there, <now> now`` for every field of the settings dataclass ``settings`` that
    differs from ``recorded`` (what an earlier run wrote down). A setting not recorded (written before
    the setting existed) matches its default and "not applicable" (None). Eval run folders and
    ``infer --batch`` answer files (``batch_infer.py``) refuse a rerun with other settings through it."""
    found = []
    for f in fields(settings):
        now = getattr(settings, f.name)
        if f.name not in recorded and now in (f.default, None):
            continue
        if recorded.get(f.name) != now:
            found.append(f"{f.name}: {recorded.get(f.name)!r} there, {now!r} now")
    return found


def model_setting(model: str) -> str:
    """``--model`` as a setting: a folder as an absolute path (so a rerun from another folder matches),
    anything else (a preset name, a hub id) as given."""
    path = Path(model)
    return str(path.resolve()) if path.exists() else model


def versions() -> dict[str, str]:
    """Versions of Python and the packages that decide the numbers."""
    found = {"python": platform.python_version()}
    for package in ("seganswer-cli", "torch", "transformers", "numpy", "pycocotools"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


class EvalRun:
    """One run folder: the items to evaluate, those already done, and how to do the rest."""

    def __init__(self, spec: BenchmarkSpec, data: BenchmarkData, settings: RunSettings, folder: Path,
                 items: list[EvalItem], done: dict[str, dict], run_info: dict[str, Any], limit: int | None = None,
                 failed: dict[str, dict] | None = None, on_error: OnError = "skip"):
        self.spec = spec
        self.data = data
        self.settings = settings
        self.folder = folder
        self.items = items
        """The items of this invocation (the split, cut to ``--limit``), in benchmark order."""
        self.done = done
        """id -> prediction record already in ``predictions.jsonl``."""
        self.failed = failed if failed is not None else {}
        """id -> record of a sample whose inputs could not be read (``FAILED``: why); tried again by ``execute``."""
        self.errors = RecordErrors(on_error)
        """What a sample that cannot be read does: ``skip`` (recorded as failed, the run goes on) or ``stop``."""
        self.run_info = run_info
        self.limit = limit
        """``--limit`` of this invocation (recorded in the summary's counts; not a setting of the run)."""
        self.judge: judging.Judge | None = None
        """The judge of this invocation, once ``execute`` has made it (``--judge`` runs only)."""

    @property
    def todo(self) -> list[EvalItem]:
        return [item for item in self.items if item.id not in self.done]

    @property
    def judge_failed(self) -> list[EvalItem]:
        """Done items whose judge call failed: ``execute`` asks the judge again, from the recorded output."""
        return [item for item in self.items if self.done.get(item.id, {}).get("judge_failed")]

    @classmethod
    def open(cls, spec: BenchmarkSpec, data: BenchmarkData, settings: RunSettings, folder: Path, *,
             limit: int | None = None, skip_missing: bool = False, on_error: OnError = "skip") -> EvalRun:
        """Check the data, the settings and the folder, then read what is done. Nothing is loaded or
        written: ``run.json`` is written by ``execute`` once the model has loaded.

        Raises ``DataError`` naming the first missing image unless ``skip_missing``; ``UsageError`` when
        ``folder`` holds a run with other settings, or is not empty and holds no run.
        """
        errors = RecordErrors(on_error)  # validates on_error
        if data.missing and not skip_missing:
            raise DataError(
                f"{spec.name}: {len(data.missing)} record(s) have no image; first: {data.missing[0]} "
                "(--skip-missing evaluates without them, leaving them out of the denominator)"
            )
        if limit is not None and limit < 1:
            raise UsageError("--limit must be >= 1")
        items = data.items[:limit] if limit is not None else list(data.items)
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"{data.source}: item id {duplicate!r} appears twice; predictions are keyed by id")
        if any(item.image is None for item in items):
            raise UsageError(f"{spec.name} split {settings.split!r} has text-only questions, which the "
                             "reasoning loop does not take; choose a split with images")
        if spec.task == "qa":
            from seganswer_cli.reasoning import ReasoningSettings

            ReasoningSettings(roi=settings.roi, max_seg_steps=settings.max_seg_steps,
                              max_new_tokens=settings.max_new_tokens,
                              opening=settings.opening or "model")  # validates them
            check_mask_source(spec, settings, items)
        if settings.judge is not None:
            judging.check_protocol(spec.name, spec.protocol.judge)
        folder = Path(folder)
        run_info = _check_run_file(folder, settings)
        done, failed = _read_prediction_records(folder / PREDICTIONS)
        return cls(spec, data, settings, folder, items, done, run_info, limit, failed, errors.on_error)

    def execute(self, load_model: Callable[[], Any], *, batch_size: int = 8, save_vis: int = 0,
                on_batch: Callable[[int, str], None] | None = None, judge_client: Any = None) -> dict[str, Any]:
        """Evaluate the items not done yet, appending predictions; write and return ``summary.json``.

        ``load_model()`` is called only when there is something to evaluate. ``on_batch(n, note)`` is
        called after each ``batch_size`` samples finished (and after the last) with their number and the
        running metric. With a
        judge in the settings, ``judge_client`` asks it (default: ``judge.client_for`` the settings'
        judge); samples whose judge call failed in an earlier invocation are judged again first, from
        their recorded output (the model is not run for them).
        """
        if batch_size < 1:
            raise UsageError("--batch-size must be >= 1")
        todo = self.todo
        # The model loads before anything is written: a --model, --device or --dtype that fails leaves
        # no run.json behind to block the corrected command.
        model = load_model() if todo else None
        if model is not None or not (self.folder / RUN_FILE).is_file():
            self.write_run_file(model)
        config = judging.JudgeConfig.from_settings(self.settings)
        if config is not None and (todo or self.judge_failed):
            self.judge = judging.Judge(judge_client or judging.client_for(config), self.spec.protocol.judge,
                                       judging.JudgeCache(self.folder / judging.JUDGE_CACHE))
            self._judge_again()
        if todo:
            self._forget_failures(todo)
            predict = self._qa_predictions if self.spec.task == "qa" else self._mask_predictions
            order = {item.id: index for index, item in enumerate(self.items)}
            vis_left, since = save_vis, 0
            with jsonl.JsonlAppender(self.folder / PREDICTIONS) as sink:
                for item, record, figure in predict(model, todo, batch_size):
                    if FAILED in record:  # stop: raises here, after the samples that finished before it
                        self.errors.fail(self.data.source or self.spec.name, item.id, record[FAILED] + (
                            " (--on-error skip records it as failed and goes on)" if self.errors.on_error == "stop" else ""))
                        sink.write(_jsonable(record))
                        self.failed[item.id] = record
                    else:
                        sink.write(_jsonable(record))
                        self.done[item.id] = record
                        if vis_left > 0:
                            vis_left -= 1
                            self._save_figure(figure(), order[item.id], item.id, record["correct"])
                    since += 1
                    if on_batch is not None and since == batch_size:
                        on_batch(since, running_note(self.spec, self.results()))
                        since = 0
            if on_batch is not None and since:
                on_batch(since, running_note(self.spec, self.results()))
        summary = self.summary()
        _write_json(self.folder / SUMMARY, summary)
        return summary

    def write_run_file(self, model=None) -> None:
        """Write ``run.json``: the settings and, given the loaded ``model``, its card and the package versions."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if model is not None:
            self.run_info["model_info"] = _jsonable(getattr(model, "info", {}))
            self.run_info["versions"] = versions()
        _write_json(self.folder / RUN_FILE, self.run_info)

    # -- predicting ------------------------------------------------------------------------------

    def _qa_predictions(self, model, todo: list[EvalItem], batch_size: int):
        """``(item, record, figure)`` of each question as the reasoning loop finishes it: one stream over
        all of ``todo`` with ``batch_size`` rows at a time, refilled as rows finish
        (``ReasoningLoop.stream``), so a batch never waits for its slowest question. An item whose inputs
        cannot be read gets its failed record at once (``skip``), or ends the asking (``stop``): the
        questions already asked finish first, then its record comes. ``figure()`` draws the overlay."""
        from seganswer_cli.eval.answers import choice_by_likelihood
        from seganswer_cli.reasoning import Ask, ReasoningLoop, ReasoningSettings, answer_nll

        s = self.settings
        loop = ReasoningLoop(model, ReasoningSettings(roi=s.roi, max_seg_steps=s.max_seg_steps,
                                                      max_new_tokens=s.max_new_tokens,
                                                      opening=s.opening or "model"))  # cheap: no state
        likelihood = s.protocol == "likelihood"
        asked: list[EvalItem] = []  # stream index -> item
        images: dict[int, Any] = {}  # stream index -> image, until its question finishes
        failed: list[tuple[EvalItem, dict[str, Any]]] = []

        def asks():
            for item, inputs in self._read(todo, batch_size, regions=s.masks == "gt"):
                if isinstance(inputs, str):
                    failed.append((item, failed_record(item, inputs)))
                    if self.errors.on_error == "stop":
                        return
                    continue
                image, region = inputs
                images[len(asked)] = image
                asked.append(item)
                # the likelihood protocol asks the question alone: the options are scored, not shown
                yield Ask(image, item.question if likelihood else item.prompt, region)

        for index, traj in loop.stream(asks(), batch_size):
            if self.errors.on_error == "skip":
                while failed:
                    yield (*failed.pop(0), None)
            item, image = asked[index], images.pop(index)
            if likelihood:
                nll = dict(zip(item.options, answer_nll(model, image, traj, list(item.options.values())),
                               strict=True))
                result, judged = choice_by_likelihood(nll, item), {"option_nll": nll}
            else:
                result, judged = self._score_text(traj.text, item)
            yield item, {**qa_record(item, result, traj), **judged}, functools.partial(_trajectory_figure, image, traj)
        for item, record in failed:
            yield item, record, None

    def _score_text(self, output: str, item: EvalItem) -> tuple[SampleResult, dict[str, Any]]:
        """The rules' score, then the judge's where the protocol asks one (the record fields it adds)."""
        result = self.spec.score(output, item)
        if self.judge is None:
            return result, {}
        return self.judge.review(output, item, result)

    def _judge_again(self) -> None:
        """Ask the judge again for done samples whose judge call failed; ``predictions.jsonl`` is
        rewritten in place (through a temporary file) when any of them gets a verdict."""
        retried = False
        for item in self.judge_failed:
            record = self.done[item.id]
            result, judged = self._score_text(record["output"], item)
            if judged.get("judge_failed") is False:
                self.done[item.id] = {**record, **result.to_json(), **judged}
                retried = True
        if retried:
            path = self.folder / PREDICTIONS
            jsonl.rewrite(path, [self.done.get(str(r["id"]), r) for r in jsonl.read_records(path)])

    def _mask_predictions(self, model, todo: list[EvalItem], batch_size: int):
        """``(item, record, figure)`` of each referring expression: ``segment_batch`` (one teacher-forced
        forward, SAM 2.1 stacked) per ``batch_size`` of them; an item whose image cannot be read gets its
        failed record after the good samples of its batch."""
        read = self._read(todo, batch_size)
        for start in range(0, len(todo), batch_size):
            batch, images, failed = [], [], []
            for item, inputs in itertools.islice(read, min(batch_size, len(todo) - start)):
                if isinstance(inputs, str):
                    failed.append((item, failed_record(item, inputs), None))
                else:
                    batch.append(item)
                    images.append(inputs[0])
            if batch:
                t0 = time.perf_counter()
                predictions = model.segment_batch(images, [item.question for item in batch])
                seconds = (time.perf_counter() - t0) / len(batch)
                for item, image, (mask, iou, score) in zip(batch, images, predictions, strict=True):
                    result = self.spec.score(mask, item)
                    yield (item, mask_record(item, result, mask, iou, score, seconds),
                           functools.partial(mask_figure, image, mask, item, result))
            yield from failed

    def _read(self, todo: list[EvalItem], batch_size: int, *, regions: bool = False):
        """``(item, _inputs(item))`` of each of ``todo``, in order, read ``batch_size`` at a time by a few
        threads (Pillow releases the GIL while it decodes): the images of a batch decode side by side."""
        workers = max(1, min(batch_size, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                yield from zip(chunk, pool.map(functools.partial(self._inputs, regions=regions), chunk))

    def _inputs(self, item: EvalItem, *, regions: bool = False):
        """The item's decoded image and ``--masks gt`` region (None without ``regions``), or why they
        cannot be read (one line, the readers' error classes: ``RecordErrors``)."""
        found = RecordErrors("skip")
        inputs = found.attempt(self.data.source or self.spec.name, item.id, lambda: (
            item.load_image(), item.load_gt_mask() if regions else None))
        return found.skipped[-1].reason if inputs is None else inputs

    def _forget_failures(self, todo: list[EvalItem]) -> None:
        """Take the failed records of samples about to be tried again out of ``predictions.jsonl``
        (rewritten through a temporary file), so that the file keeps one record per sample."""
        again = {item.id for item in todo} & set(self.failed)
        if not again:
            return
        path = self.folder / PREDICTIONS
        jsonl.rewrite(path, [r for r in jsonl.read_records(path) if not (FAILED in r and str(r["id"]) in again)])
        for item_id in again:
            del self.failed[item_id]

    def _save_figure(self, figure, index: int, item_id: str, correct: bool) -> None:
        folder = self.folder / VIS_DIR
        folder.mkdir(exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", item_id).strip("-")[:80]
        figure.save(folder / f"{index:04d}_{'ok' if correct else 'wrong'}_{safe}.png")

    # -- summarizing -----------------------------------------------------------------------------

    def results(self) -> list[SampleResult]:
        """The scored samples done so far, in benchmark order."""
        return [SampleResult.from_json(self.done[item.id]) for item in self.items if item.id in self.done]

    def summary(self) -> dict[str, Any]:
        """Everything ``summary.json`` holds, rebuilt from the prediction records of ``items``."""
        records = [self.done[item.id] for item in self.items if item.id in self.done]
        results = [SampleResult.from_json(r) for r in records]
        metrics = self.spec.summarize(results)
        skipped = len(self.data.missing)
        failed = [self.failed[item.id] for item in self.items if item.id in self.failed]
        return _jsonable({
            "benchmark": self.spec.name,
            "split": self.settings.split,
            "task": self.spec.task,
            "headline": {"metric": self.spec.headline, "value": metrics.get(self.spec.headline)},
            "metrics": metrics,
            "protocol": self.spec.protocol.to_json(),
            "judge": judging.judge_summary(judging.JudgeConfig.from_settings(self.settings),
                                           self.spec.protocol.judge, records),
            "cost": cost_summary(records) if self.spec.task == "qa" else {},
            "timing": {"seconds_per_sample": _mean([r.get("timings", {}).get("total") for r in records])},
            "counts": {
                "items": len(self.data.items) + skipped,
                "evaluated": len(results),
                "missing_images": skipped,
                "failed": len(failed),
                "limit": self.limit,
            },
            "missing": [str(m) for m in self.data.missing[:20]],
            "failed": [{"id": r["id"], "reason": r[FAILED]} for r in failed[:20]],
            "source": self.data.source,
            "settings": asdict(self.settings),
            "model_info": self.run_info.get("model_info", {}),
            "versions": self.run_info.get("versions", versions()),
        })


# -- prediction records ----------------------------------------------------------------------------


MASK_SOURCES = ("model", "gt")


def check_mask_source(spec: BenchmarkSpec, settings: RunSettings, items: list[EvalItem]) -> None:
    """``UsageError`` unless ``settings.masks`` can be honoured: ``gt`` needs a second look and an
    annotated region on every question."""
    if settings.masks not in MASK_SOURCES:
        raise UsageError(f"unknown --masks {settings.masks!r}; expected one of {', '.join(MASK_SOURCES)}")
    if settings.masks != "gt":
        return
    if settings.roi == "none":
        raise UsageError("--masks gt shows the annotated region in the second look, and --roi none has none")
    without = [item.id for item in items if item.gt_rle is None]
    if without:
        raise UsageError(f"--masks gt needs the region each question is about; {spec.name} has none for "
                         f"{len(without)} of {len(items)} questions (first: {without[0]}); shapes-vqa has them")


def qa_record(item: EvalItem, result: SampleResult, traj) -> dict[str, Any]:
    """One ``predictions.jsonl`` line of a question: the score (id, correct, extracted answer, the rule
    that extracted it, ground truth, groups), the question, the raw output (every model turn), each
    ``<|seg|>`` step (mask as COCO RLE, box, kept visual tokens), token counts and seconds per phase."""
    from seganswer_cli.reasoning import trajectory_record

    trace = trajectory_record(traj)
    return {
        **result.to_json(),
        "question": item.question,
        "output": traj.text,
        "answer_source": traj.answer_source,
        "stop_reason": traj.stop_reason,
        "kept_tokens": sum(step.kept_tokens for step in traj.steps),
        "steps": trace["steps"],
        "generated_tokens": trace["generated_tokens"],
        "sequence_tokens": trace["sequence_tokens"],
        "timings": trace["timings"],
    }


def failed_record(item: EvalItem, reason: str) -> dict[str, Any]:
    """The ``predictions.jsonl`` line of a sample that could not be evaluated (its image does not decode,
    its region does not load): id, question and why. Left out of the metrics, counted in the summary
    (``counts.failed``, ``failed``), tried again by the next invocation."""
    return {"id": item.id, FAILED: reason, "question": item.question}


def mask_record(item: EvalItem, result: SampleResult, mask, iou: float, score: float, seconds: float) -> dict:
    """One ``predictions.jsonl`` line of a referring expression: the score (pixel counts, IoU >= 0.5),
    the expression, the predicted mask as COCO RLE, the model's IoU estimate and object score."""
    from seganswer_cli.masks import encode_rle

    union = result.union or 0
    return {
        **result.to_json(),
        "question": item.question,
        "iou": 1.0 if union == 0 else (result.intersection or 0) / union,
        "mask": encode_rle(mask),
        "mask_area": int(mask.sum()),
        "predicted_iou": round(float(iou), 4),
        "object_score": round(float(score), 4),
        "timings": {"total": round(seconds, 4)},
    }


def cost_summary(records: Sequence[dict]) -> dict[str, float | None]:
    """What the answers cost: how often the model looked again, the visual tokens of that second look
    (mean over the samples that had one), and generated tokens per sample."""
    looked = [r for r in records if r.get("steps")]
    return {
        "second_look_rate": len(looked) / len(records) if records else None,
        "mean_visual_tokens": _mean([r.get("kept_tokens") for r in looked]),
        "mean_generated_tokens": _mean([r.get("generated_tokens") for r in records]),
    }


def running_note(spec: BenchmarkSpec, results: Sequence[SampleResult]) -> str:
    """The running metric shown next to the progress bar: accuracy, or cIoU for segmentation."""
    if not results:
        return ""
    if spec.task == "segmentation":
        union = sum(r.union or 0 for r in results)
        return f"cIoU {sum(r.intersection or 0 for r in results) / union:.3f}" if union else "cIoU -"
    return f"acc {sum(r.correct for r in results) / len(results):.3f}"


def _trajectory_figure(image, traj):
    from seganswer_cli.viz import trajectory_figure

    return trajectory_figure(image, traj)


def mask_figure(image, mask, item: EvalItem, result: SampleResult):
    """The predicted mask (red) beside the target (green), with the IoU and the expression."""
    from seganswer_cli.viz import overlay_mask, side_by_side

    union = result.union or 0
    iou = 1.0 if union == 0 else (result.intersection or 0) / union
    return side_by_side(
        [overlay_mask(image, mask), overlay_mask(image, item.load_gt_mask(), colour=(64, 220, 96))],
        [f"prediction: IoU {iou:.2f}", f"target: {item.question}"[:80]],
    )


# -- files -----------------------------------------------------------------------------------------


def read_predictions(path: Path, *, repair: bool = True) -> dict[str, dict]:
    """id -> record of every scored sample in ``predictions.jsonl`` (empty when there is none); the
    records of failed samples (``failed_record``) are left out.

    A last line without its newline was cut by a kill (``seganswer_cli.jsonl``'s rules): with ``repair``
    it is removed from the file and that sample is evaluated again; readers that only look (``eval
    sheet``, maybe while the run goes on) pass ``repair=False`` and skip it. A broken line elsewhere,
    or one without ``id`` and either ``correct`` or ``failed``, is a ``DataError``.
    """
    return _read_prediction_records(path, repair=repair)[0]


def _read_prediction_records(path: Path, *, repair: bool = True) -> tuple[dict[str, dict], dict[str, dict]]:
    """(id -> scored record, id -> failed record) of ``predictions.jsonl``; see ``read_predictions``."""
    read = jsonl.repair if repair else jsonl.read_records
    scored, failed = {}, {}
    for record in read(path, require=("id",)):
        if FAILED in record:
            failed[str(record["id"])] = record
        elif "correct" in record:
            scored[str(record["id"])] = record
        else:
            raise DataError(f"{path}: the record of id {record['id']!r} has neither 'correct' nor '{FAILED}'; "
                            "fix or remove the line")
    return scored, {k: v for k, v in failed.items() if k not in scored}


def _check_run_file(folder: Path, settings: RunSettings) -> dict[str, Any]:
    """The run file's content: new for a fresh folder (nothing is written here), compared with ``settings``
    for an existing run."""
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out {folder} is a file; give a folder for the run")
        if (folder / PREDICTIONS).exists():
            raise UsageError(f"{folder} has {PREDICTIONS} but no {RUN_FILE}: not a seganswer eval run folder")
        if folder.is_dir() and any(folder.iterdir()):
            raise UsageError(f"{folder} is not empty and holds no {RUN_FILE}: not a seganswer eval run folder; "
                             "give a new or empty folder as --out")
        return {"settings": asdict(settings)}  # written by EvalRun.execute once the model has loaded
    info = read_json(run_file)
    differences = settings.differences(info.get("settings", {}))
    if differences:
        raise UsageError(f"{folder} holds a run with other settings ({'; '.join(differences)}); "
                         "give another --out, or delete the folder to start over")
    return info


def load_summary(folder: Path) -> dict[str, Any]:
    """``summary.json`` of a run folder, with ``run`` set to the folder."""
    path = Path(folder) / SUMMARY
    if not path.is_file():
        hint = " (the run has not finished: rerun the same command to complete it)" if (
            Path(folder) / RUN_FILE).is_file() else " (not a seganswer eval run folder)"
        raise DataError(f"{path} not found{hint}")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None
    return {"run": str(folder), **summary}


def _write_json(path: Path, data: dict) -> None:
    """Write through a temporary file and a rename, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    """NaN and infinities become ``None`` (strict JSON); tuples become lists; numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _mean(values: Sequence[float | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return sum(present) / len(present) if present else None
