"""``eval`` through the streaming loop: questions finish out of order and queued ones take their slots;
the records are those each question gets alone, one line per sample, and a killed run resumes to them."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from seganswer_cli.eval import get_benchmark
from seganswer_cli.eval.items import BenchmarkData, EvalItem
from seganswer_cli.eval.runner import PREDICTIONS, EvalRun, RunSettings, qa_record
from seganswer_cli.reasoning import ReasoningSettings, run

MAX_NEW_TOKENS = 50


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _data(cases) -> BenchmarkData:
    """Questions the patterned model answers at once (a plain image: 4 tokens) between ones it segments
    first (its noise images: ~30 tokens, two turns)."""
    plain = Image.new("RGB", (240, 180), (200, 30, 30))
    (image_a, question_a, _, _), (image_b, question_b, _, _) = cases[:2]
    asked = [(image_a, question_a), (plain, "Count."), (image_b, question_b), (image_a, "x"), (plain, question_a),
             (image_b, "Describe everything you see in this picture in great detail."), (plain, "x")]
    return BenchmarkData([EvalItem(f"q{i}", "shapes-vqa", _png(image), question, question, "red", answer_kind="text",
                                   groups={"question_type": "colour"}) for i, (image, question) in enumerate(asked)],
                         source="streaming test")


def _settings(spec, data) -> RunSettings:
    return RunSettings.create(spec, data, data_path=None, split=None, model="patterned", roi="mask",
                              max_seg_steps=1, max_new_tokens=MAX_NEW_TOKENS)


def _records(folder) -> list[dict]:
    lines = (folder / PREDICTIONS).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "timings"} for line in lines]


def test_streamed_records_are_those_of_each_question_alone(patterned_model, tmp_path):
    model, cases = patterned_model
    spec = get_benchmark("shapes-vqa")
    data = _data(cases)
    streamed = EvalRun.open(spec, data, _settings(spec, data), tmp_path / "three").execute(lambda: model, batch_size=3)
    EvalRun.open(spec, data, _settings(spec, data), tmp_path / "one").execute(lambda: model, batch_size=1)
    three, one = _records(tmp_path / "three"), _records(tmp_path / "one")
    assert len(three) == len(data.items) and [r["id"] for r in three] != [r["id"] for r in one]  # as they finished
    assert len({r["generated_tokens"] for r in three}) > 1 and any(r["steps"] for r in three)
    by_id = {r["id"]: r for r in three}
    assert by_id == {r["id"]: r for r in one}
    # ... and what the loop gives each question asked on its own, recorded as eval records it
    settings = ReasoningSettings(max_new_tokens=MAX_NEW_TOKENS)
    for item in data.items:
        traj = run(model, item.load_image(), item.prompt, settings)
        alone = {k: v for k, v in qa_record(item, spec.score(traj.text, item), traj).items() if k != "timings"}
        assert json.loads(json.dumps(alone)) == by_id[item.id]

    # killed mid-write: the cut line is redone, the rest kept; the summary is the uninterrupted run's
    path = tmp_path / "three" / PREDICTIONS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:25])
    (tmp_path / "three" / "summary.json").unlink()
    resumed = EvalRun.open(spec, data, _settings(spec, data), tmp_path / "three")
    assert len(resumed.todo) == len(data.items) - 3
    summary = resumed.execute(lambda: model, batch_size=3)
    assert {r["id"]: r for r in _records(tmp_path / "three")} == by_id
    for key in ("metrics", "cost", "counts"):
        assert summary[key] == streamed[key]
    assert np.isfinite(summary["metrics"]["accuracy"])
