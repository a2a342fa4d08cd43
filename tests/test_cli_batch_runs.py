"""``seganswer infer --batch``: one record per input line in input order, bad rows reported with their
reason while the others are answered, settings recorded and a rerun with others refused, nothing
lost or answered twice on resume."""

import hashlib
import json
import subprocess
import sys

import pytest

from cli_helpers import run_cli
from seganswer_cli.errors import SegAnswerError

pytestmark = pytest.mark.slow  # the patterned model's training (session fixture): seconds alone, minutes on a shared CPU


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "timings"}


@pytest.fixture
def batch_cli(monkeypatch, patterned_model, tmp_path):
    """``seganswer ...`` in this process (the real entry point: one line on stderr, exit codes), its
    model loader serving the session's patterned model; ``asked`` lists the questions the loop got."""
    from seganswer_cli.reasoning import ReasoningLoop

    model, cases = patterned_model
    loads, asked = [], []
    monkeypatch.setattr("seganswer_cli.cli.infer.load_model",
                        lambda spec, device="auto", dtype="auto": loads.append(spec) or model)
    stream = ReasoningLoop.stream

    def counting_stream(self, asks, batch_size=8):
        return stream(self, (asked.append(ask.question) or ask for ask in asks), batch_size)

    monkeypatch.setattr(ReasoningLoop, "stream", counting_stream)

    def invoke(capsys, *args):
        return run_cli(monkeypatch, capsys, *args)

    invoke.loads, invoke.asked = loads, asked
    for i, (image, *_) in enumerate(cases):
        image.save(tmp_path / f"case{i}.png")
    return invoke, cases


def questions_file(tmp_path, cases) -> tuple:
    """A batch file with every kind of line; returns (path, {line: expected answer or error fragment})."""
    (tmp_path / "notimage.png").write_text("hello")
    (q0, a0), (q1, a1) = [(c[1], c[3]) for c in cases]
    lines = [
        {"id": "q0", "image": str(tmp_path / "case0.png"), "question": q0},                 # 1 answered
        "{not json",                                                                       # 2
        {"id": "q1", "image": "case1.png", "question": q1},                                # 3 relative path
        {"id": "gone", "image": "missing.png", "question": "what?"},                       # 4
        {"id": "bad", "image": "notimage.png", "question": "what?"},                       # 5
        {"id": "long", "image": "case0.png", "question": "word " * 3000},                  # 6 ~9000 tokens
        {"id": "q0", "image": "case1.png", "question": q1},                                # 7 duplicate id
        "",                                                                                # 8 blank: skipped
        {"id": 7, "image": "case1.png", "question": q1},                                   # 9 answered
        {"image": "case0.png", "question": ""},                                            # 10
    ]
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    expected = {1: a0, 2: "not JSON", 3: a1, 4: "image not found", 5: "cannot identify image file",
                6: "question too long for the model's context: the prompt (image and question) is",
                7: "duplicate id 'q0' (first on line 1)", 9: a1, 10: "missing or empty 'question'"}
    return path, expected


def check(out_records: list[dict], expected: dict) -> None:
    assert [r["line"] for r in out_records] == sorted(expected)  # input order, every non-blank line
    for record in out_records:
        want = expected[record["line"]]
        if "error" in record:
            assert want in record["error"], record
        else:
            assert record["answer"] == want, record
        assert record["settings"]["roi"] == "mask" and record["settings"]["model"] == "tiny"


def test_every_line_gets_a_record_in_input_order(batch_cli, capsys, tmp_path):
    invoke, cases = batch_cli
    batch, expected = questions_file(tmp_path, cases)
    answers = tmp_path / "answers.jsonl"
    code, out, err = invoke(capsys, "infer", "--batch", batch, "--out", answers, "--model", "tiny",
                            "--batch-size", 2, "--quiet")
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1] == (f"error: 6 line(s) of {batch} could not be answered (see the lines above; their records "
                         f"in {answers} say why, and a rerun tries them again)")
    assert f"failed {batch}:2: not JSON" in err and f"failed {batch}:4 (id gone): image not found" in err
    assert "3 answered · 6 failed" in err
    out_records = records(answers)
    check(out_records, expected)
    assert {r["id"] for r in out_records if "answer" in r} == {"q0", "q1", "7"}
    assert out_records[0]["settings"] == {"model": "tiny", "dtype": "auto", "roi": "mask", "max_seg_steps": 1,
                                          "max_new_tokens": 256, "sample": False, "temperature": 1.0,
                                          "top_p": 1.0, "seed": 0, "opening": "model"}
    assert "word" not in "".join(invoke.asked)  # the long question never reached the loop


def test_a_killed_run_resumes_with_only_the_rest(batch_cli, capsys, tmp_path):
    """Kill after some answers (records out of order, the last line cut): the rerun answers only the
    questions without an answer, tries the errors again, and leaves the file in input order; the
    answers kept are the very records written before the kill."""
    invoke, cases = batch_cli
    batch, expected = questions_file(tmp_path, cases)
    full = tmp_path / "full.jsonl"
    invoke(capsys, "infer", "--batch", batch, "--out", full, "--model", "tiny", "--quiet")
    reference = records(full)
    by_line = {r["line"]: r for r in reference}
    killed = tmp_path / "killed.jsonl"
    kept = [by_line[9], by_line[2], by_line[1]]  # appended as they came: not input order
    killed.write_text("".join(json.dumps(r) + "\n" for r in kept) + json.dumps(by_line[3])[:40])
    invoke.asked.clear()
    code, _, err = invoke(capsys, "infer", "--batch", batch, "--out", killed, "--model", "tiny")
    assert code == 1
    assert "9 lines · 2 already answered" in err and "· 4 to do" in err  # q1, and the 3 errors again
    assert invoke.asked == [cases[1][1]]  # only q1 (line 3, cut by the kill) asked again
    resumed = records(killed)
    check(resumed, expected)
    assert resumed[0] == by_line[1] and resumed[-2] == by_line[9]  # kept byte for byte
    assert [without_timings(r) for r in resumed] == [without_timings(r) for r in reference]
    # Only the errors left: they are tried again (same reasons), nothing is asked, the file is unchanged.
    invoke.asked.clear()
    before = sha256(killed)
    code, _, err = invoke(capsys, "infer", "--batch", batch, "--out", killed, "--model", "tiny")
    assert code == 1 and invoke.asked == [] and sha256(killed) == before


def test_a_rerun_with_other_settings_is_refused(batch_cli, capsys, tmp_path):
    invoke, cases = batch_cli
    batch, _ = questions_file(tmp_path, cases)
    answers = tmp_path / "answers.jsonl"
    invoke(capsys, "infer", "--batch", batch, "--out", answers, "--model", "tiny", "--quiet")
    before = sha256(answers)
    invoke.loads.clear()
    for args, difference in ((["--roi", "bbox"], "roi: 'mask' there, 'bbox' now"),
                             (["--max-new-tokens", 8], "max_new_tokens: 256 there, 8 now"),
                             (["--model", tmp_path], f"model: 'tiny' there, '{tmp_path}' now")):
        code, out, err = invoke(capsys, "infer", "--batch", batch, "--out", answers, "--model", "tiny", *args)
        assert code == 2 and out == ""
        assert err.strip() == (f"error: {answers} holds answers made with other settings ({difference}); give "
                               "another --out, or delete the file to start over")
    assert sha256(answers) == before and invoke.loads == []


def test_a_file_that_is_not_ours_is_refused(batch_cli, capsys, tmp_path):
    """An --out that holds other JSONL (the user's own file, or the batch file itself) is not appended to."""
    invoke, cases = batch_cli
    batch, _ = questions_file(tmp_path, cases)
    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text('{"id": "x", "answer": "mine"}\n{"partial')
    for out, message in ((theirs, f"{theirs} is not an answers file of seganswer infer --batch (its records carry "
                                  "no settings); give another --out"),
                         (batch, f"--out {batch} is the batch file: writing it would destroy it; choose another file")):
        before = sha256(out)
        code, _, err = invoke(capsys, "infer", "--batch", batch, "--out", out, "--model", "tiny")
        assert code == 2 and err.strip() == f"error: {message}"
        assert sha256(out) == before
    assert invoke.loads == []


def test_a_batch_that_fails_is_answered_row_by_row(batch_cli, capsys, tmp_path, monkeypatch):
    """A row the loop cannot take (here: made to fail as it joins the batch) gets an error record; its
    neighbours in the same batch are answered, and so are the rows after it."""
    from seganswer_cli.reasoning import ReasoningLoop

    invoke, cases = batch_cli
    start = ReasoningLoop._start

    def fails_on_square(self, joining):
        if any("left" in ask.question for _, ask in joining):
            raise SegAnswerError("this row breaks the loop")
        return start(self, joining)

    monkeypatch.setattr(ReasoningLoop, "_start", fails_on_square)
    batch = tmp_path / "two.jsonl"
    batch.write_text("".join(json.dumps({"id": f"q{i}", "image": f"case{i % 2}.png", "question": c[1]}) + "\n"
                             for i, c in enumerate(cases + cases[:1])))
    answers = tmp_path / "answers.jsonl"
    code, _, err = invoke(capsys, "infer", "--batch", batch, "--out", answers, "--model", "tiny", "--quiet")
    assert code == 1
    first, second, third = records(answers)
    assert first["answer"] == cases[0][3] == third["answer"]
    assert second["error"] == "the model failed on this question: this row breaks the loop"


def test_refusal_is_one_line_through_the_executable(tmp_path):
    """The same refusal from the entry point itself, before any model is loaded."""
    batch = tmp_path / "q.jsonl"
    batch.write_text('{"id": "a", "image": "x.png", "question": "q"}\n')
    answers = tmp_path / "a.jsonl"
    settings = {"model": "shapes", "dtype": "auto", "roi": "mask", "max_seg_steps": 1, "max_new_tokens": 256,
                "sample": False, "temperature": 1.0, "top_p": 1.0, "seed": 0}
    answers.write_text(json.dumps({"line": 1, "id": "a", "answer": "red", "settings": settings}) + "\n")
    before = sha256(answers)
    out = subprocess.run([sys.executable, "-m", "seganswer_cli", "infer", "--batch", str(batch), "--out", str(answers),
                          "--roi", "none"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == (f"error: {answers} holds answers made with other settings (roi: 'mask' there, "
                                  "'none' now); give another --out, or delete the file to start over")
    assert sha256(answers) == before
