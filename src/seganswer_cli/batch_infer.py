"""``seganswer infer --batch FILE --out ANSWERS.jsonl``: a file of questions answered into a file of
records, one per input line, in input order, resumable.

The questions file is JSONL, one ``{"id", "image", "question"}`` object per line (``image`` relative
to the file's folder unless absolute; ``id`` a string or number, the line number when absent). Blank
lines are skipped. The answers file gets one record per other line, whatever happened to it::

    {"line": 1, "id": "q0", "image": "...", <trajectory_record: question, answer, ..., timings>, "settings": {...}}
    {"line": 2, "id": null, "error": "not JSON (Expecting ...)", "settings": {...}}
    {"line": 3, "id": "q2", "image": "...", "question": "...", "error": "image not found: ...", "settings": {...}}

- **Settings.** Every record carries ``settings`` (``BatchSettings``: model, dtype, roi and the
  generation settings). A rerun into the same ``--out`` with other settings is refused in one line
  naming each difference, before any model is loaded or anything written, as ``eval`` refuses a run
  folder with other settings; so is a file whose records carry no settings (not written by
  ``infer --batch``). The records themselves say how they were made: there is no second file to
  keep in step.
- **Errors.** A line that is not a JSON object, lacks ``image`` or ``question``, or repeats an id;
  an image that is missing, undecodable, over the size limit (``images.py``) or that the model's
  image processor refuses; a question whose prompt does not fit the model's context
  (``max_position_embeddings``): each gets an ``error`` record with the reason and the other rows
  are answered. Questions stream through the loop ``--batch-size`` at a time, a finished row's slot
  taken by the next question (``ReasoningLoop.stream``). A batch that fails as a whole has the rows it
  held answered again one by one, so one bad row never takes its neighbours down, and the rest go on
  streaming.
- **Resume.** An answered record (``answer`` a string, or null with ``answer_reason``: a result) is
  kept and its id not asked again; an ``error`` record is not kept: every run reads the questions
  file again and tries those rows again (the image may have been fixed). Records are appended and
  flushed as they come (``jsonl.JsonlAppender``), so a kill loses nothing written.
- **Order.** When the run ends the file is rewritten in input order (``jsonl.rewrite``: a temporary
  file and a rename). A killed run leaves the records in the order they were written; the rerun,
  even with nothing left to do, puts them in order. Answers whose id is no longer in the questions
  file are kept, after the others, in their earlier order.

Typical use (what ``seganswer infer --batch`` does)::

    run = BatchRun.open(Path("questions.jsonl"), Path("answers.jsonl"),
                        BatchSettings.create("shapes", "auto", ReasoningSettings()), batch_size=8)
    counts = run.execute(lambda: SegAnswerModel.from_pretrained("shapes"))
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seganswer_cli import jsonl
from seganswer_cli.errors import SegAnswerError, UsageError


@dataclass(frozen=True)
class BatchSettings:
    """What decides the answers of a batch run; a rerun into the same ``--out`` must match them."""

    model: str
    """The model folder as an absolute path, or a preset name."""
    dtype: str
    """Weights dtype the model was loaded in (``auto``: the checkpoint's)."""
    roi: str
    """Second look: ``mask``, ``bbox`` or ``none``."""
    max_seg_steps: int
    """Most ``<|seg|>`` rounds per question."""
    max_new_tokens: int
    """Most generated tokens per question."""
    sample: bool
    """Sampled (True) or greedy decoding."""
    temperature: float
    """Sampling temperature (with ``sample``)."""
    top_p: float
    """Nucleus sampling mass (with ``sample``)."""
    seed: int | None
    """Sampling seed."""
    opening: str = "model"
    """How the model's turns open (``ReasoningSettings.opening``)."""

    @classmethod
    def create(cls, model: str, dtype: str, reasoning) -> BatchSettings:
        """From the ``--model`` spec (a folder made absolute, so a rerun from elsewhere matches) and the
        loop's ``ReasoningSettings``."""
        from seganswer_cli.eval.runner import model_setting

        return cls(model=model_setting(model), dtype=dtype, roi=reasoning.roi, max_seg_steps=reasoning.max_seg_steps,
                   max_new_tokens=reasoning.max_new_tokens, sample=reasoning.sample,
                   temperature=reasoning.temperature, top_p=reasoning.top_p, seed=reasoning.seed,
                   opening=reasoning.opening)

    def reasoning(self):
        """The ``ReasoningSettings`` the loop runs with."""
        from seganswer_cli.reasoning import ReasoningSettings

        return ReasoningSettings(roi=self.roi, max_seg_steps=self.max_seg_steps, max_new_tokens=self.max_new_tokens,
                                 sample=self.sample, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                                 opening=self.opening)


@dataclass(frozen=True)
class Question:
    """One well-formed line of the questions file."""

    line: int
    id: str
    image: Path
    """Resolved against the questions file's folder."""
    question: str


@dataclass(frozen=True)
class BadLine:
    """A line of the questions file that is not a question (its record is an error)."""

    line: int
    id: str | None
    reason: str


@dataclass
class BatchCounts:
    """What one ``execute`` did."""

    answered: int = 0
    """Questions of this run with an answer."""
    unanswered: int = 0
    """Questions of this run the model answered without an answer (``answer`` null: a result)."""
    failed: list[dict[str, Any]] = field(default_factory=list)
    """The error records of this run (bad lines included), in input order."""


def read_questions(path: Path) -> list[Question | BadLine]:
    """Every non-blank line of ``path``, in file order, as a question or as the reason it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"batch file not found: {path}")
    entries: list[Question | BadLine] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            entries.append(BadLine(number, None, f"not JSON ({e})"))
            continue
        if not isinstance(record, dict):
            entries.append(BadLine(number, None, "not a JSON object"))
            continue
        raw_id = record.get("id", number)
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            entries.append(BadLine(number, None, f"id must be a string or a number, got {raw_id!r}"))
            continue
        rec_id = str(raw_id)
        missing = [key for key in ("image", "question") if not isinstance(record.get(key), str) or not record[key].strip()]
        if missing:
            entries.append(BadLine(number, rec_id, f"missing or empty {' and '.join(map(repr, missing))}"))
            continue
        if rec_id in seen:
            entries.append(BadLine(number, rec_id, f"duplicate id {rec_id!r} (first on line {seen[rec_id]})"))
            continue
        seen[rec_id] = number
        image = Path(record["image"])
        entries.append(Question(number, rec_id, image if image.is_absolute() else path.parent / image, record["question"]))
    return entries


class BatchRun:
    """One questions file answered into one answers file: what is done, what is left, how to do it."""

    def __init__(self, source: Path, out: Path, settings: BatchSettings, entries: list[Question | BadLine],
                 kept: list[dict[str, Any]], batch_size: int):
        self.source = source
        self.out = out
        self.settings = settings
        self.entries = entries
        """Every non-blank line of the questions file, in order."""
        self.kept = kept
        """The answered records already in ``out`` (errors left out: they are tried again), in file order."""
        self.done = {str(record["id"]): record for record in kept}
        """id -> answered record already in ``out``."""
        self.batch_size = batch_size

    @property
    def questions(self) -> list[Question]:
        return [e for e in self.entries if isinstance(e, Question)]

    @property
    def bad_lines(self) -> list[BadLine]:
        return [e for e in self.entries if isinstance(e, BadLine)]

    @property
    def todo(self) -> list[Question]:
        return [q for q in self.questions if q.id not in self.done]

    @classmethod
    def open(cls, source: Path, out: Path, settings: BatchSettings, *, batch_size: int = 4) -> BatchRun:
        """Check the options, the questions file and ``out``; read what is done (that ``out`` is not the
        questions file itself is checked where the command line is parsed). Nothing is loaded or
        written: ``UsageError`` when ``out`` holds answers of other settings, or records that are not
        ``infer --batch`` answers; ``DataError`` when one of its complete lines is not JSON."""
        if batch_size < 1:
            raise UsageError("--batch-size must be >= 1")
        settings.reasoning()  # validates roi and the generation settings
        source, out = Path(source), Path(out)
        entries = read_questions(source)
        records = jsonl.read_records(out)  # a last line cut by a kill is skipped here, cut by the appender
        _check_settings(out, settings, records)
        kept = [r for r in records if "error" not in r and "answer" in r]
        return cls(source, out, settings, entries, kept, batch_size)

    def execute(self, load_model: Callable[[], Any], *,
                on_record: Callable[[dict[str, Any]], None] | None = None) -> BatchCounts:
        """Answer what is left, appending one record per line, then rewrite ``out`` in input order.

        ``load_model()`` is called once, when the first readable image is to be asked (never when every
        row left has an unreadable image); ``on_record(record)`` after each record is written (the error
        records of bad lines first)."""
        from seganswer_cli.reasoning import Ask, ReasoningLoop, trajectory_record, world_warning

        counts = BatchCounts()
        todo = self.todo
        reasoning = self.settings.reasoning()
        loop = None  # the model loads when the first readable image needs it
        errors: dict[int, dict[str, Any]] = {}  # line -> this run's error record
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with jsonl.JsonlAppender(self.out) as sink:
            def write(record: dict[str, Any]) -> None:
                record = {**record, "settings": asdict(self.settings)}
                sink.write(record)
                if "error" in record:
                    errors[record["line"]] = record
                    counts.failed.append(record)
                else:
                    self.done[record["id"]] = record
                    counts.answered += record["answer"] is not None
                    counts.unanswered += record["answer"] is None
                if on_record is not None:
                    on_record(record)

            for bad in self.bad_lines:
                write({"line": bad.line, "id": bad.id, "error": bad.reason})
            def readable():
                """(question, image) of each row the model can take; the others get their error record."""
                nonlocal loop
                for q in todo:
                    image = _read_image(q)
                    if not isinstance(image, str):
                        loop = loop or ReasoningLoop(load_model(), reasoning)
                        image = _fits_the_model(loop.model, q, image, reasoning)
                    if isinstance(image, str):
                        write(_error_record(q, image))
                    else:
                        warnings[q.line] = world_warning(loop.model, image, q.question)
                        yield q, image

            warnings: dict[int, str | None] = {}  # line -> the toy-world warning of its picture

            def answered(q: Question, outcome) -> None:
                if isinstance(outcome, str):
                    write(_error_record(q, outcome))
                    return
                record = trajectory_record(outcome, line=q.line, id=q.id, image=str(q.image))
                warning = warnings.pop(q.line, None)
                if warning:
                    record["warning"] = warning
                write(record)

            def asks(rows, flying: dict[int, tuple[Question, Any]]):
                """One stream's questions, each in ``flying`` under its stream index until it finishes."""
                for index, (q, image) in enumerate(rows):
                    flying[index] = (q, image)
                    yield Ask(image, q.question)

            pending = readable()
            first = next(pending, None)  # the model loads here, for the first row it can take
            pending = itertools.chain([first], pending) if first is not None else iter(())
            while first is not None:
                flying: dict[int, tuple[Question, Any]] = {}
                try:
                    for index, traj in loop.stream(asks(pending, flying), self.batch_size):
                        answered(flying.pop(index)[0], traj)
                    break
                except (SegAnswerError, ValueError):  # the batch failed as a whole: its rows one by one,
                    for q, outcome in _answer(loop, list(flying.values())):  # then a new stream for the rest
                        answered(q, outcome)
        self._rewrite_in_order(errors)
        counts.failed.sort(key=lambda r: r["line"])
        return counts

    def _rewrite_in_order(self, errors: dict[int, dict[str, Any]]) -> None:
        """``out`` as one record per input line, in input order, then answers of ids no longer asked."""
        ordered, placed = [], set()
        for entry in self.entries:
            if isinstance(entry, Question) and entry.id in self.done:
                ordered.append({**self.done[entry.id], "line": entry.line})
                placed.add(entry.id)
            elif entry.line in errors:
                ordered.append(errors[entry.line])
        ordered += [r for r in self.kept if str(r["id"]) not in placed]
        jsonl.rewrite(self.out, ordered)


def _check_settings(out: Path, settings: BatchSettings, records: list[dict[str, Any]]) -> None:
    """``UsageError`` unless every record of ``out`` was made with ``settings``."""
    from seganswer_cli.eval.runner import settings_differences

    for record in records:
        recorded = record.get("settings")
        if not isinstance(recorded, dict) or "id" not in record:
            raise UsageError(f"{out} is not an answers file of seganswer infer --batch (its records carry no "
                             "settings); give another --out")
        differences = settings_differences(settings, recorded)
        if differences:
            raise UsageError(f"{out} holds answers made with other settings ({'; '.join(differences)}); "
                             "give another --out, or delete the file to start over")


def _read_image(question: Question):
    """The question's image, or why it cannot be read (one line)."""
    from seganswer_cli.images import load_image

    try:
        return load_image(question.image)
    except SegAnswerError as e:
        return str(e)


def _fits_the_model(model, question: Question, image, settings):
    """``image`` back, or why the model cannot take the row: the image processor refuses the image, or
    the prompt (image and question) leaves no room in the model's context."""
    from seganswer_cli.model.conversation import reasoning_start

    try:
        prompt = len(reasoning_start(model, model.global_view(image), question.question, system=settings.system))
    except (SegAnswerError, ValueError) as e:  # e.g. the image processor's aspect-ratio limit
        return f"the model cannot take image {question.image}: {' '.join(str(e).split())}"
    context = context_length(model)
    if context is not None and prompt >= context:
        return (f"question too long for the model's context: the prompt (image and question) is {prompt} tokens, "
                f"the context {context}")
    return image


def _answer(loop, ready: list[tuple[Question, Any]]) -> list[tuple[Question, Any]]:
    """(question, trajectory or error reason) of each row; a batch that fails is run again row by row,
    so the error lands on the row that causes it."""
    if not ready:
        return []
    try:
        trajectories = loop.run([image for _, image in ready], [q.question for q, _ in ready])
    except (SegAnswerError, ValueError) as e:
        if len(ready) == 1:
            return [(ready[0][0], f"the model failed on this question: {' '.join(str(e).split())}")]
        return [outcome for row in ready for outcome in _answer(loop, [row])]
    return [(q, traj) for (q, _), traj in zip(ready, trajectories, strict=True)]


def _error_record(question: Question, reason: str) -> dict[str, Any]:
    return {"line": question.line, "id": question.id, "image": str(question.image), "question": question.question,
            "error": reason}


def context_length(model) -> int | None:
    """The most positions the MLLM was built for (``max_position_embeddings``), None when unknown."""
    config = getattr(getattr(model, "mllm", None), "config", None)
    config = getattr(config, "text_config", config)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None
