"""``seganswer eval`` on bad input: an undecodable image is recorded as failed and the run goes on
(``--on-error skip``) or stops after the good samples of its batch (``stop``); ``--out`` refuses a
folder that is not a run; an option that fails leaves no ``run.json`` to block the corrected command.
Through the real entry point (``cli.main``): one line on stderr, the exit code, files unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import run_cli
from seganswer_cli.cli import app

SMALL = ["--size", "96x64", "--min-size", "8", "--max-size", "24"]
QA = ["--model", "tiny", "--max-new-tokens", "4", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def vqa_data(tmp_path_factory) -> Path:
    """Five shapes-vqa questions written by ``seganswer data synth``."""
    folder = tmp_path_factory.mktemp("shapes") / "vqa"
    result = CliRunner().invoke(app, ["data", "synth", "--kind", "vqa", "--n", "5", *SMALL, "--seed", "11",
                                      "--out", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def eval_cli(monkeypatch, tiny_model):
    """``seganswer eval ...`` in this process; ``--model tiny`` is served the session's tiny model, any
    other spec goes to the real loader. ``loads`` lists the specs asked for."""
    from seganswer_cli.cli import options

    loads = []

    def load(spec, device="auto", dtype="auto"):
        loads.append(spec)
        return tiny_model if spec == "tiny" else options.load_model(spec, device, dtype)

    monkeypatch.setattr("seganswer_cli.cli.eval.load_model", load)

    def invoke(capsys, *args):
        return run_cli(monkeypatch, capsys, "eval", *args)

    invoke.loads = loads
    return invoke


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def scored(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "timings"}


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def broken_copy(vqa_data: Path, tmp_path: Path, index: int) -> tuple[Path, str]:
    """A copy of the data whose ``index``-th image is not an image; returns (folder, that item's id)."""
    data = tmp_path / "data"
    shutil.copytree(vqa_data, data)
    record = json.loads((data / "records.jsonl").read_text().splitlines()[index])
    (data / record["image"]).write_bytes(b"not a png")
    return data, record["id"]


def test_an_undecodable_image_is_recorded_and_the_run_goes_on(eval_cli, capsys, vqa_data, tmp_path):
    code, out, err = eval_cli(capsys, "shapes-vqa", "--data", vqa_data, "--out", tmp_path / "clean", "--json", *QA)
    assert code == 0, err
    clean = {r["id"]: r for r in records(tmp_path / "clean")}
    data, bad_id = broken_copy(vqa_data, tmp_path, 1)  # the second item: it shares a batch with the first
    run = tmp_path / "run"
    code, out, err = eval_cli(capsys, "shapes-vqa", "--data", data, "--out", run, "--json", *QA)
    assert code == 0, err
    summary = json.loads(out)
    reason = f"cannot read image {data / 'images' / '000001.png'}: cannot identify image file"
    failed = [r for r in records(run) if "failed" in r]
    assert len(failed) == 1 and failed[0]["id"] == bad_id and failed[0]["failed"].startswith(reason)
    assert summary["counts"]["failed"] == 1 and summary["counts"]["evaluated"] == 4 == summary["metrics"]["n"]
    assert summary["failed"] == [{"id": bad_id, "reason": failed[0]["failed"]}]
    assert f"1 sample(s) failed (recorded in {run / 'predictions.jsonl'} with the reason" in err
    # The good samples, the first batch's included, are those of the clean run.
    good = {r["id"]: scored(r) for r in records(run) if "failed" not in r}
    assert good == {i: scored(r) for i, r in clean.items() if i != bad_id}

    # The image fixed, a rerun tries that sample again, and only it; the file keeps one line per sample.
    shutil.copy(vqa_data / "images" / "000001.png", data / "images" / "000001.png")
    eval_cli.loads.clear()
    code, out, err = eval_cli(capsys, "shapes-vqa", "--data", data, "--out", run, "--json", *QA)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["counts"]["failed"] == 0 and summary["failed"] == [] and summary["counts"]["evaluated"] == 5
    after = records(run)
    assert len(after) == 5 and not any("failed" in r for r in after) and after[-1]["id"] == bad_id
    assert scored(after[-1]) == scored(clean[bad_id])


def test_on_error_stop_keeps_the_good_samples_of_its_batch(eval_cli, capsys, vqa_data, tmp_path):
    data, bad_id = broken_copy(vqa_data, tmp_path, 1)
    run = tmp_path / "run"
    code, out, err = eval_cli(capsys, "shapes-vqa", "--data", data, "--out", run, "--on-error", "stop", *QA)
    assert code == 1 and out == ""
    assert err.strip() == (f"error: {data / 'records.jsonl'}: record {bad_id}: cannot read image "
                           f"{data / 'images' / '000001.png'}: cannot identify image file "
                           f"{str(data / 'images' / '000001.png')!r} (--on-error skip records it as failed and "
                           "goes on)")
    first = json.loads((data / "records.jsonl").read_text().splitlines()[0])["id"]
    assert [r["id"] for r in records(run)] == [first]  # the good sample of the bad one's batch
    assert (run / "run.json").is_file() and not (run / "summary.json").exists()


def test_out_that_is_not_a_run_is_refused(eval_cli, capsys, vqa_data, tmp_path):
    theirs = tmp_path / "results"
    theirs.mkdir()
    (theirs / "summary.json").write_text('{"mine": true}\n')
    (theirs / "notes.txt").write_text("do not touch\n")
    before = checksums(theirs)
    code, out, err = eval_cli(capsys, "shapes-vqa", "--data", vqa_data, "--out", theirs, *QA)
    assert code == 2 and out == ""
    assert err.strip() == (f"error: {theirs} is not empty and holds no run.json: not a seganswer eval run folder; "
                           "give a new or empty folder as --out")
    assert checksums(theirs) == before and eval_cli.loads == []
    a_file = tmp_path / "file.txt"
    a_file.write_text("x\n")
    code, _, err = eval_cli(capsys, "shapes-vqa", "--data", vqa_data, "--out", a_file, *QA)
    assert code == 2 and a_file.read_text() == "x\n" and eval_cli.loads == []
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = eval_cli(capsys, "shapes-vqa", "--data", vqa_data, "--out", empty, "--limit", 1, *QA)
    assert code == 0, err  # an empty folder is a fresh run


def test_a_failed_option_leaves_nothing_behind(eval_cli, capsys, vqa_data, tmp_path):
    """A mistyped --model fails in one line, --batch-size 0 with the usage line and its error (as every
    bad option value); neither writes anything, so the corrected
    command starts the run instead of being refused as "a run with other settings"."""
    run = tmp_path / "run"
    code, out, err = eval_cli(capsys, "shapes-vqa", "--data", vqa_data, "--out", run, *QA, "--model", "tinyy")
    assert code == 1 and err.strip().count("\n") == 0 and "model folder not found: tinyy" in err
    assert not (run / "run.json").exists()
    code, out, err = eval_cli(capsys, "shapes-vqa", "--data", vqa_data, "--out", run, *QA, "--batch-size", 0)
    assert code == 2 and err.strip().splitlines()[-1] == ("Error: Invalid value for '--batch-size': "
                                                          "Input should be greater than or equal to 1")
    assert not (run / "run.json").exists()
    assert not run.exists() or not any(run.iterdir())
    code, out, err = eval_cli(capsys, "shapes-vqa", "--data", vqa_data, "--out", run, "--limit", 1, *QA)
    assert code == 0, err
    assert json.loads((run / "run.json").read_text())["settings"]["model"] == "tiny"


def test_segmentation_runs_record_failed_samples_too(eval_cli, capsys, tmp_path):
    folder = tmp_path / "refseg"
    result = CliRunner().invoke(app, ["data", "synth", "--kind", "refseg", "--n", "4", *SMALL, "--seed", "11",
                                      "--out", str(folder)])
    assert result.exit_code == 0, result.output
    data, bad_id = broken_copy(folder, tmp_path, 2)
    code, out, err = eval_cli(capsys, "shapes-refseg", "--data", data, "--out", tmp_path / "run", "--json", *QA)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["counts"]["failed"] == 1 and summary["counts"]["evaluated"] == 3 == summary["metrics"]["n"]
    assert summary["failed"][0]["id"] == bad_id and "cannot read image" in summary["failed"][0]["reason"]
    assert sorted("failed" in r for r in records(tmp_path / "run")) == [False, False, False, True]
