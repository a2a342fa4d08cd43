"""``seganswer eval`` end to end on the tiny model: shapes-vqa and shapes-refseg, resume after a kill,
``eval report``, and bad input (one clear line, non-zero exit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from seganswer_cli.cli import app
from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.model import tokens

runner = CliRunner()
SMALL = ["--size", "96x64", "--min-size", "8", "--max-size", "24"]
TINY = ["--model", "tiny"]  # not the default (the shipped shapes model): fast, and what tiny_cli serves
QA = [*TINY, "--max-new-tokens", "4", "--batch-size", "2", "--quiet"]


@pytest.fixture
def tiny_cli(monkeypatch, tiny_model):
    """The CLI's model loader returns the session's tiny model (the same weights ``--model tiny`` builds,
    without rebuilding them on every invocation); records what it was asked for."""
    calls = []

    def load(spec, device="auto", dtype="auto"):
        calls.append(spec)
        assert spec == "tiny"
        return tiny_model

    monkeypatch.setattr("seganswer_cli.cli.eval.load_model", load)
    return calls


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """Small synth folders written by ``seganswer data synth``: {"vqa": DIR, "refseg": DIR}."""
    root = tmp_path_factory.mktemp("shapes")
    folders = {}
    for kind, n in (("vqa", 5), ("refseg", 4)):
        folders[kind] = root / kind
        result = runner.invoke(app, ["data", "synth", "--kind", kind, "--n", str(n), *SMALL, "--seed", "11",
                                     "--out", str(folders[kind])])
        assert result.exit_code == 0, result.output
    return folders


def invoke(*args):
    return runner.invoke(app, ["eval", *map(str, args)])


def predictions(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]


def without_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "timing"}


def test_shapes_vqa_end_to_end(tiny_cli, shapes_data, tmp_path):
    run = tmp_path / "run"
    result = invoke("shapes-vqa", "--data", shapes_data["vqa"], "--out", run, "--save-vis", 2, "--json", *QA)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((run / "summary.json").read_text())
    records = predictions(run)
    assert len(records) == 5 == summary["counts"]["evaluated"] == summary["metrics"]["n"]
    assert summary["metrics"]["accuracy"] == sum(r["correct"] for r in records) / 5
    assert summary["metrics"]["accuracy_ci_low"] <= summary["metrics"]["accuracy"] <= summary["metrics"]["accuracy_ci_high"]
    assert summary["settings"]["roi"] == "mask" and summary["settings"]["max_new_tokens"] == 4
    assert summary["settings"]["data"] == str(shapes_data["vqa"].resolve())
    assert summary["model_info"]["preset"] == "tiny" and "torch" in summary["versions"]
    assert set(summary["cost"]) == {"second_look_rate", "mean_visual_tokens", "mean_generated_tokens"}
    assert summary["timing"]["seconds_per_sample"] > 0
    first = records[0]
    assert {"id", "question", "output", "extracted", "rule", "correct", "kept_tokens", "steps", "timings"} <= set(first)
    assert first["generated_tokens"] <= 4 and first["stop_reason"] in {"length", "eos", "answer", "end_of_turn"}
    assert len(list((run / "vis").glob("*.png"))) == 2
    assert tiny_cli == ["tiny"]
    # Everything is done: a rerun loads no model and rewrites the same summary.
    result = invoke("shapes-vqa", "--data", shapes_data["vqa"], "--out", run, "--json", *QA)
    assert result.exit_code == 0 and tiny_cli == ["tiny"]
    assert without_timing(json.loads(result.stdout)) == without_timing(summary)


def test_shapes_vqa_generated_by_default(tiny_cli, tmp_path):
    result = invoke("shapes-vqa", "--out", tmp_path / "run", "--limit", 2, *QA)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "--limit 2" in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["source"].startswith("shapes world (generated)") and summary["counts"]["evaluated"] == 2


def test_shapes_refseg_end_to_end(tiny_cli, shapes_data, tmp_path):
    run = tmp_path / "run"
    result = invoke("shapes-refseg", "--data", shapes_data["refseg"], "--out", run, "--batch-size", 3,
                    "--save-vis", 1, "--json", *TINY)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    records = predictions(run)
    assert len(records) == 4 and all(r["mask"]["size"] == [64, 96] for r in records)
    ciou = sum(r["intersection"] for r in records) / sum(r["union"] for r in records)
    assert summary["metrics"]["ciou"] == pytest.approx(ciou)
    assert summary["metrics"]["giou"] == pytest.approx(sum(r["iou"] for r in records) / 4)
    assert summary["headline"] == {"metric": "ciou", "value": summary["metrics"]["ciou"]}
    assert summary["settings"]["roi"] is None and summary["cost"] == {}
    assert len(list((run / "vis").glob("*.png"))) == 1


def test_killed_run_resumes_to_the_same_summary(tiny_cli, shapes_data, tmp_path):
    data = shapes_data["vqa"]
    full = invoke("shapes-vqa", "--data", data, "--out", tmp_path / "full", "--json", *QA)
    assert full.exit_code == 0, full.output
    # Killed after 3 samples (--limit stands in for the kill), then rerun without the limit.
    part = invoke("shapes-vqa", "--data", data, "--out", tmp_path / "part", "--limit", 3, *QA)
    assert part.exit_code == 0, part.output
    assert len(predictions(tmp_path / "part")) == 3
    resumed = invoke("shapes-vqa", "--data", data, "--out", tmp_path / "part", "--json", *QA)
    assert resumed.exit_code == 0, resumed.output
    assert without_timing(json.loads(resumed.stdout)) == without_timing(json.loads(full.stdout))
    assert [r["id"] for r in predictions(tmp_path / "part")] == [r["id"] for r in predictions(tmp_path / "full")]

    # Killed while writing: the last line is cut short. The cut sample is redone, nothing twice.
    file = tmp_path / "part" / "predictions.jsonl"
    raw = file.read_bytes()
    file.write_bytes(raw[: len(raw) - 40])
    again = invoke("shapes-vqa", "--data", data, "--out", tmp_path / "part", "--json", *QA)
    assert again.exit_code == 0, again.output
    assert without_timing(json.loads(again.stdout)) == without_timing(json.loads(full.stdout))
    assert len(predictions(tmp_path / "part")) == 5


def test_refuses_to_mix_settings_in_one_run_folder(tiny_cli, shapes_data, tmp_path):
    run = tmp_path / "run"
    assert invoke("shapes-vqa", "--data", shapes_data["vqa"], "--out", run, "--limit", 1, *QA).exit_code == 0
    result = invoke("shapes-vqa", "--data", shapes_data["vqa"], "--out", run, "--roi", "bbox", *QA)
    assert isinstance(result.exception, UsageError)
    assert "roi: 'mask' there, 'bbox' now" in str(result.exception)
    assert len(predictions(run)) == 1


def test_forced_opening_asks_every_mode_the_same_way(tiny_cli, shapes_data, tmp_path):
    """``--opening forced``: the random model, which never asks for a region, looks at every question
    with --roi mask; the setting is the run's (a rerun with the default is refused)."""
    run = tmp_path / "forced"
    result = invoke("shapes-vqa", "--data", shapes_data["vqa"], "--out", run, "--opening", "forced", "--json", *QA)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["settings"]["opening"] == "forced" and summary["cost"]["second_look_rate"] == 1.0
    assert all(len(r["steps"]) == 1 and r["output"].startswith(tokens.SEG_RESPONSE) for r in predictions(run))
    result = invoke("shapes-vqa", "--data", shapes_data["vqa"], "--out", run, *QA)
    assert isinstance(result.exception, UsageError) and "opening: 'forced' there, None now" in str(result.exception)


def test_ground_truth_masks_reach_the_reasoning_loop(tiny_cli, shapes_data, tmp_path, monkeypatch):
    """``--masks gt``: each question's annotated region goes to the loop in place of SAM 2.1's mask."""
    import numpy as np

    from seganswer_cli.data.formats import open_dataset
    from seganswer_cli.reasoning import ReasoningLoop

    given = []
    real_stream = ReasoningLoop.stream

    def stream(self, asks, batch_size=8):
        return real_stream(self, (given.append(ask.region) or ask for ask in asks), batch_size)

    monkeypatch.setattr(ReasoningLoop, "stream", stream)
    result = invoke("shapes-vqa", "--data", shapes_data["vqa"], "--out", tmp_path / "gt", "--masks", "gt",
                    "--limit", 3, *QA)
    assert result.exit_code == 0, result.output
    samples = list(open_dataset(shapes_data["vqa"]))[:3]
    assert len(given) == 3 and all(np.array_equal(g, s.region()) for g, s in zip(given, samples))
    assert json.loads((tmp_path / "gt" / "summary.json").read_text())["settings"]["masks"] == "gt"
    result = invoke("shapes-vqa", "--data", shapes_data["vqa"], "--out", tmp_path / "none", "--masks", "gt",
                    "--roi", "none", *QA)
    assert isinstance(result.exception, UsageError) and "--roi none has none" in str(result.exception)


def test_report_puts_runs_side_by_side(tiny_cli, shapes_data, tmp_path):
    for roi in ("mask", "none"):
        result = invoke("shapes-vqa", "--data", shapes_data["vqa"], "--out", tmp_path / roi, "--roi", roi,
                        "--limit", 2, *QA)
        assert result.exit_code == 0, result.output
    result = invoke("report", tmp_path / "mask", tmp_path / "none", "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert [r["settings"]["roi"] for r in runs] == ["mask", "none"]
    assert [r["run"] for r in runs] == [str(tmp_path / "mask"), str(tmp_path / "none")]
    result = runner.invoke(app, ["eval", "report", str(tmp_path / "mask"), str(tmp_path / "none")],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout and "roi" in result.stdout and "none" in result.stdout
    # question by question against the first run: only "none" right on its first question
    for roi in ("mask", "none"):
        path = tmp_path / roi / "predictions.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**r, "correct": roi == "none" and i == 0}) + "\n"
                                for i, r in enumerate(records)))
    runs = json.loads(invoke("report", tmp_path / "mask", tmp_path / "none", "--json").stdout)["runs"]
    assert "paired_with_first" not in runs[0]
    assert runs[1]["paired_with_first"] == {"only_a": 1, "only_b": 0, "shared": 2, "p_value": 1.0}
    table = invoke("report", tmp_path / "mask", tmp_path / "none", "--markdown").stdout
    assert "| vs first run: only this right / only first right (p) | - | 1 / 0 of 2 (p 1) |" in table
    result = invoke("report", tmp_path / "mask", tmp_path / "nothing")
    assert isinstance(result.exception, DataError) and "summary.json not found" in str(result.exception)


def test_missing_image_fails_unless_skipped(tiny_cli, shapes_data, tmp_path):
    import shutil

    data = tmp_path / "refseg"
    shutil.copytree(shapes_data["refseg"], data)
    (data / "images" / "000001.png").unlink()
    result = invoke("shapes-refseg", "--data", data, "--out", tmp_path / "run", *TINY)
    assert isinstance(result.exception, DataError)
    assert "1 record(s) have no image" in str(result.exception) and "images/000001.png" in str(result.exception)
    assert not (tmp_path / "run" / "predictions.jsonl").exists()
    result = invoke("shapes-refseg", "--data", data, "--out", tmp_path / "run", "--skip-missing", "--json", *TINY)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"] == {"items": 4, "evaluated": 3, "missing_images": 1, "failed": 0, "limit": None}
    assert summary["metrics"]["n"] == 3 and "000001.png" in summary["missing"][0]
    assert "without an image left out" in result.stderr


def test_data_in_the_wrong_format_names_the_file(tiny_cli, shapes_data, tmp_path):
    result = invoke("shapes-vqa", "--data", shapes_data["refseg"], "--out", tmp_path / "run")
    assert isinstance(result.exception, DataError)
    assert "seganswer_data.json: kind is 'refseg'" in str(result.exception) and "--kind vqa" in str(result.exception)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("shapes-vqa", "--data", empty, "--out", tmp_path / "run")
    assert isinstance(result.exception, DataError) and "expected seganswer_data.json" in str(result.exception)
    result = invoke("vstar", "--data", empty, "--out", tmp_path / "run")
    assert isinstance(result.exception, DataError) and "expected test_questions.jsonl" in str(result.exception)
    result = invoke("vstar", "--out", tmp_path / "run")
    assert isinstance(result.exception, UsageError) and "vstar needs --data" in str(result.exception)
    assert tiny_cli == []  # no model was loaded for bad input


def test_errors_are_one_line_through_the_executable(shapes_data, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "seganswer_cli", "eval", *map(str, args)],
                              capture_output=True, text=True, timeout=120)

    out = run("vstr", "--data", tmp_path, "--out", tmp_path / "run")
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
    assert "unknown benchmark 'vstr'" in out.stderr and "vstar" in out.stderr and "shapes-refseg" in out.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "seganswer_data.json").write_text(json.dumps({"format": "seganswer", "version": 1, "kind": "vqa"}))
    (bad / "records.jsonl").write_text('{"type": "vqa"}\n')
    out = run("shapes-vqa", "--data", bad, "--out", tmp_path / "run")
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0
    assert f"{bad / 'records.jsonl'}: line 1" in out.stderr and "expected a vqa record" in out.stderr


def test_vstar_option_order_is_a_setting_of_the_run(tiny_cli, tmp_path):
    """``--option-order fixed`` (the right option first) is recorded, and a rerun into the folder in the
    default (shuffled) order is refused rather than mixed in; other benchmarks refuse the option."""
    from PIL import Image

    root = tmp_path / "vstar_bench"
    for subset in ("direct_attributes", "relative_position"):
        (root / subset).mkdir(parents=True)
        for index in range(2):
            (root / subset / f"sa_{index}.json").write_text(json.dumps(
                {"question": f"Which colour is shape {index}?", "options": ["red", "blue", "green", "white"]}))
            Image.new("RGB", (32, 24), "gray").save(root / subset / f"sa_{index}.jpg")
    run = tmp_path / "run"
    result = invoke("vstar", "--data", root, "--out", run, "--option-order", "fixed", "--json", *QA)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["settings"]["option_order"] == "fixed" and summary["counts"]["evaluated"] == 4
    assert {r["answer"] for r in predictions(run)} == {"A"}
    assert summary["protocol"]["source"] == "penghao-wu/vstar: vstar_bench_eval.py"
    result = invoke("vstar", "--data", root, "--out", run, *QA)
    assert isinstance(result.exception, UsageError) and "option_order: 'fixed' there, 'shuffled' now" in str(
        result.exception)
    result = invoke("pope", "--data", root, "--out", tmp_path / "pope", "--option-order", "fixed", *QA)
    assert isinstance(result.exception, UsageError) and "--option-order applies to" in str(result.exception)

    # the official protocol: the question alone, each option scored as the final answer
    run = tmp_path / "likelihood"
    result = invoke("vstar", "--data", root, "--out", run, "--protocol", "likelihood", "--json", *QA)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["settings"]["protocol"] == "likelihood" and summary["counts"]["evaluated"] == 4
    def prompt_tokens(record):
        return record["sequence_tokens"] - record["generated_tokens"] - record["kept_tokens"]

    generated = {r["id"]: r for r in predictions(tmp_path / "run")}
    for record in predictions(run):
        nll = record["option_nll"]
        assert set(nll) == {"A", "B", "C", "D"} and record["rule"] == "likelihood"
        assert record["extracted"] == min(nll, key=nll.get)
        assert record["correct"] == (record["extracted"] == record["answer"])
        # asked without the options and the letter instruction
        assert prompt_tokens(record) < prompt_tokens(generated[record["id"]])
    result = invoke("vstar", "--data", root, "--out", tmp_path / "x", "--protocol", "vote", *QA)
    assert result.exit_code == 2 and "Invalid value for '--protocol'" in result.output  # the usage line
    result = invoke("pope", "--data", root, "--out", tmp_path / "pope", "--protocol", "likelihood", *QA)
    assert isinstance(result.exception, UsageError) and "--protocol applies to" in str(result.exception)
