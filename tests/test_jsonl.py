"""JSONL results files: a line cut by a kill is skipped by readers and cut off by writers, never
appended onto; a broken complete line is a ``DataError`` naming the line. Then each writer that
resumes (eval predictions, ``infer --batch`` answers, training metrics) on a file whose last line
was cut: afterwards every line of the file is complete and the cut record is done again (or absent)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from seganswer_cli import jsonl
from seganswer_cli.errors import DataError

CUT = '{"id": "x", "pred'  # what a kill mid-write leaves: no closing brace, no newline


def complete_lines(path) -> list[dict]:
    """Every line of ``path`` as JSON, asserting the file ends on a complete line."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), "the file ends in a cut line"
    return [json.loads(line) for line in text.split("\n")[:-1]]


# -- the rules -------------------------------------------------------------------------------------


def test_readers_skip_a_cut_last_line_and_leave_the_file(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\n' + CUT)
    assert jsonl.read_records(path) == [{"id": "a"}]
    assert path.read_text() == '{"id": "a"}\n' + CUT  # a reader never changes the file
    path.write_text(CUT)
    assert jsonl.read_records(path) == []
    assert jsonl.read_records(tmp_path / "none.jsonl") == []


def test_repair_truncates_to_the_last_complete_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\n' + CUT)
    assert jsonl.repair(path) == [{"id": "a"}]
    assert path.read_text() == '{"id": "a"}\n'
    path.write_text(CUT)
    assert jsonl.repair(path) == [] and path.read_bytes() == b""
    assert jsonl.repair(tmp_path / "none.jsonl") == [] and not (tmp_path / "none.jsonl").exists()


def test_the_appender_repairs_before_it_appends(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\n' + CUT)
    with jsonl.JsonlAppender(path) as sink:
        sink.write({"id": "x", "pred": 1})
        assert complete_lines(path)[-1] == {"id": "x", "pred": 1}  # flushed per record, not at close
    assert complete_lines(path) == [{"id": "a"}, {"id": "x", "pred": 1}]
    # a cut line longer than the block read back from the end, and a file that is all one cut line
    path.write_text('{"id": "a"}\n' + '{"id": "' + "y" * 200)
    jsonl._cut_partial_line(path, block=16)
    assert path.read_text() == '{"id": "a"}\n'
    path.write_text("z" * 100)
    with jsonl.JsonlAppender(path, sort_keys=True) as sink:
        sink.write({"b": 1, "a": "\u00e9\u2028"})  # U+2028 is written raw and is not a line break here
    assert path.read_text(encoding="utf-8") == '{"a": "\u00e9\u2028", "b": 1}\n'
    assert jsonl.read_records(path) == [{"a": "\u00e9\u2028", "b": 1}]


@pytest.mark.parametrize("line, message", [
    ("{broken", "line 2 is not JSON"),
    ("[1, 2]", "line 2 is not a JSON object"),
    ('{"name": "no id"}', "line 2 has no 'id'"),
])
def test_a_broken_complete_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "r.jsonl"
    before = '{"id": "a"}\n' + line + "\n" + CUT
    path.write_text(before)
    for read in (jsonl.read_records, jsonl.repair):
        with pytest.raises(DataError, match=f"r.jsonl: {message}"):
            read(path, require=("id",))
    assert path.read_text() == before  # repair changes nothing on a file it cannot read
    path.write_bytes(b'{"id": "a"}\n\xff\xfe\n')
    with pytest.raises(DataError, match="line 2 is not JSON"):
        jsonl.read_records(path)


def test_blank_lines_are_skipped_and_counted_in_line_numbers(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "a"}\n\n  \n{"id": "b"}\n')
    assert jsonl.repair(path) == [{"id": "a"}, {"id": "b"}]
    assert path.read_text() == '{"id": "a"}\n\n  \n{"id": "b"}\n'  # left in place
    path.write_text('\n\n{bad\n')
    with pytest.raises(DataError, match="line 3 is not JSON"):
        jsonl.read_records(path)


def test_rewrite_replaces_the_file_through_a_temporary(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id": "old"}\n' + CUT)
    jsonl.rewrite(path, [{"id": "a"}, {"id": "b"}])
    assert complete_lines(path) == [{"id": "a"}, {"id": "b"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


# -- each writer, resumed on a file whose last line was cut -----------------------------------------


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_eval_run_resumes_a_cut_predictions_file(tmp_path, tiny_model):
    from seganswer_cli.eval import get_benchmark
    from seganswer_cli.eval.items import BenchmarkData, EvalItem
    from seganswer_cli.eval.runner import PREDICTIONS, EvalRun, RunSettings, read_predictions
    from seganswer_cli.masks import encode_rle

    rng = np.random.RandomState(0)
    target = np.zeros((48, 64), bool)
    target[10:30, 20:40] = True
    items = [EvalItem(f"r{i}", "shapes-refseg", _png((rng.rand(48, 64, 3) * 255).astype(np.uint8)),
                      "the square", "the square", "", answer_kind="mask", gt_rle=encode_rle(target))
             for i in range(3)]
    spec, data = get_benchmark("shapes-refseg"), BenchmarkData(items, source="in code")
    settings = RunSettings.create(spec, data, data_path=None, split=None, model="tiny")
    EvalRun.open(spec, data, settings, tmp_path).execute(lambda: tiny_model, batch_size=3)
    path = tmp_path / PREDICTIONS
    first, second, _ = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text(first + second[:25], encoding="utf-8")  # killed while writing r1

    assert list(read_predictions(path, repair=False)) == ["r0"]  # eval sheet's look: file untouched
    assert path.read_text(encoding="utf-8") == first + second[:25]
    run = EvalRun.open(spec, data, settings, tmp_path)
    assert [item.id for item in run.todo] == ["r1", "r2"]
    summary = run.execute(lambda: tiny_model, batch_size=2)
    assert [r["id"] for r in complete_lines(path)] == ["r0", "r1", "r2"]
    assert summary["counts"]["evaluated"] == 3


def test_infer_batch_resumes_a_cut_answers_file(tmp_path, noise_image):
    from typer.testing import CliRunner

    from seganswer_cli.cli import app

    noise_image.save(tmp_path / "img.png")
    batch = tmp_path / "questions.jsonl"
    batch.write_text("".join(json.dumps({"id": i, "image": "img.png", "question": "Colour?"}) + "\n"
                             for i in ("q0", "x")))
    answers = tmp_path / "answers.jsonl"
    settings = {"model": "tiny", "dtype": "auto", "roi": "mask", "max_seg_steps": 1, "max_new_tokens": 2,
                "sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0}  # the command's (batch_infer.py)
    answers.write_text(json.dumps({"id": "q0", "answer": "red", "settings": settings}) + "\n" + CUT)
    result = CliRunner().invoke(app, ["infer", "--batch", str(batch), "--out", str(answers), "--model", "tiny",
                                      "--max-new-tokens", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    records = complete_lines(answers)
    assert [r["id"] for r in records] == ["q0", "x"]  # q0 kept, not redone; x answered on a fresh line
    assert records[0] == {"id": "q0", "answer": "red", "settings": settings, "line": 1} and "answer" in records[1]


def test_metrics_log_resumes_a_cut_line(tmp_path):
    """The resume path of every trainer (``stage_setup.start_or_resume``): ``truncate_after`` the
    checkpoint's step, then one ``append`` per logged step."""
    from seganswer_cli.train.runs import MetricsLog

    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (1, 2, 3):
        log.append({"kind": "train", "step": step, "loss": 1.0 / step})
    text = path.read_text()
    path.write_text(text + '{"kind": "train", "lo')  # killed while writing step 4
    assert [r["step"] for r in log.read()] == [1, 2, 3]  # read skips it, never fails
    log.truncate_after(2)
    log.append({"kind": "train", "step": 3, "loss": 0.3})
    log.append({"kind": "train", "step": 4, "loss": 0.25})
    assert [r["step"] for r in complete_lines(path)] == [1, 2, 3, 4]
    assert path.read_text().splitlines()[0] == '{"kind": "train", "loss": 1.0, "step": 1}'  # sorted keys
    # a cut line met by append alone (no resume in between) is cut off, not appended onto
    path.write_text(path.read_text() + '{"kind": "tr')
    log.append({"kind": "eval", "step": 4})
    assert [r["kind"] for r in complete_lines(path)] == ["train"] * 4 + ["eval"]
