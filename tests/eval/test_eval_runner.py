"""The run folder: settings kept and checked, predictions read back after a kill, summary rebuilt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval import get_benchmark
from seganswer_cli.eval.items import BenchmarkData, EvalItem, MissingImage
from seganswer_cli.eval.runner import EvalRun, RunSettings, cost_summary, read_predictions


def items(n: int) -> list[EvalItem]:
    return [EvalItem(f"q{i}", "shapes-vqa", b"png", "Colour?", "Colour?", "red", answer_kind="text",
                     groups={"question_type": "colour"}) for i in range(n)]


def settings(**overrides) -> RunSettings:
    return RunSettings(**{"benchmark": "shapes-vqa", "split": "test", "data": "/d", "model": "tiny", **overrides})


def started(spec, data, run_settings, folder, **kwargs) -> EvalRun:
    """A run folder as ``execute`` leaves it once the model has loaded: ``run.json`` written."""
    run = EvalRun.open(spec, data, run_settings, folder, **kwargs)
    run.write_run_file()
    return run


def test_predictions_tolerate_a_cut_last_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    lines = [json.dumps({"id": "q0", "correct": True}), json.dumps({"id": "q1", "correct": False})]
    path.write_text(lines[0] + "\n" + lines[1][:10])
    assert list(read_predictions(path)) == ["q0"]
    assert path.read_text() == lines[0] + "\n"  # the next append starts on its own line
    path.write_text("{broken\n" + lines[1] + "\n")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        read_predictions(path)
    assert read_predictions(tmp_path / "none.jsonl") == {}


def test_settings_are_recorded_and_a_different_run_is_refused(tmp_path):
    spec, data = get_benchmark("shapes-vqa"), BenchmarkData(items(3), source="x")
    started(spec, data, settings(), tmp_path)
    recorded = json.loads((tmp_path / "run.json").read_text())["settings"]
    assert recorded["model"] == "tiny" and recorded["roi"] == "mask"
    EvalRun.open(spec, data, settings(), tmp_path, limit=2)  # --limit is not a setting
    with pytest.raises(UsageError, match=r"max_new_tokens: 256 there, 16 now"):
        EvalRun.open(spec, data, settings(max_new_tokens=16), tmp_path)
    with pytest.raises(UsageError, match="unknown --roi"):
        EvalRun.open(spec, data, settings(roi="box"), tmp_path / "other")


def test_ground_truth_masks_need_regions_and_a_second_look(tmp_path):
    """``--masks gt`` (oracle grounding) is a setting of the run; it needs an annotated region on
    every question and a second look to show it in. A folder written before the setting existed
    ran with the model's masks."""
    spec = get_benchmark("shapes-vqa")
    with_regions = [EvalItem(**{**vars(item), "gt_rle": {"size": [2, 2], "counts": "04"}}) for item in items(2)]
    started(spec, BenchmarkData(with_regions, source="x"), settings(masks="gt"), tmp_path / "gt")
    assert json.loads((tmp_path / "gt" / "run.json").read_text())["settings"]["masks"] == "gt"
    with pytest.raises(UsageError, match="masks: 'gt' there, 'model' now"):
        EvalRun.open(spec, BenchmarkData(with_regions, source="x"), settings(), tmp_path / "gt")
    mixed = BenchmarkData([*with_regions, EvalItem(**{**vars(items(1)[0]), "id": "q9"})], source="x")
    with pytest.raises(UsageError, match="needs the region each question is about; shapes-vqa has none for 1 of 3"):
        EvalRun.open(spec, mixed, settings(masks="gt"), tmp_path / "other")
    with pytest.raises(UsageError, match="--roi none has none"):
        EvalRun.open(spec, BenchmarkData(with_regions, source="x"), settings(masks="gt", roi="none"), tmp_path / "o")
    with pytest.raises(UsageError, match="unknown --masks 'oracle'"):
        EvalRun.open(spec, BenchmarkData(with_regions, source="x"), settings(masks="oracle"), tmp_path / "o")
    old = tmp_path / "old"
    started(spec, BenchmarkData(items(1), source="x"), settings(), old)
    run_file = json.loads((old / "run.json").read_text())
    del run_file["settings"]["masks"]
    (old / "run.json").write_text(json.dumps(run_file))
    EvalRun.open(spec, BenchmarkData(items(1), source="x"), settings(), old)  # resumes
    with pytest.raises(UsageError, match="masks: None there, 'gt' now"):
        EvalRun.open(spec, BenchmarkData(with_regions[:1], source="x"), settings(masks="gt"), old)



def test_a_no_second_look_run_records_its_protocol(tmp_path):
    """``--roi none`` answers directly now; a folder from before (an empty user turn after ``<|seg|>``,
    nothing recorded) is not resumed with it, while old ``mask`` folders still are."""
    spec = get_benchmark("shapes-vqa")
    data = BenchmarkData(items(1), source="x")
    assert settings(roi="none").no_look == "direct" and settings().no_look is None
    started(spec, data, settings(roi="none"), tmp_path / "none")
    assert json.loads((tmp_path / "none" / "run.json").read_text())["settings"]["no_look"] == "direct"
    EvalRun.open(spec, data, settings(roi="none"), tmp_path / "none")  # resumes
    for roi in ("none", "mask"):
        old = tmp_path / f"old-{roi}"
        started(spec, data, settings(roi=roi), old)
        run_file = json.loads((old / "run.json").read_text())
        del run_file["settings"]["no_look"]
        (old / "run.json").write_text(json.dumps(run_file))
        if roi == "mask":
            EvalRun.open(spec, data, settings(roi=roi), old)
        else:
            with pytest.raises(UsageError, match="no_look: None there, 'direct' now"):
                EvalRun.open(spec, data, settings(roi=roi), old)

def test_create_resolves_paths_and_drops_loop_settings_for_segmentation(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    qa = RunSettings.create(get_benchmark("shapes-vqa"), BenchmarkData([], source="gen"), data_path=None,
                            split=None, model=str(model), roi="bbox", max_seg_steps=1, max_new_tokens=8)
    assert qa.data == "gen" and qa.model == str(model.resolve()) and qa.split == "test" and qa.roi == "bbox"
    seg = RunSettings.create(get_benchmark("shapes-refseg"), BenchmarkData([]), data_path=Path("."), split=None,
                             model="tiny", roi="bbox", max_seg_steps=1, max_new_tokens=8)
    assert (seg.roi, seg.max_seg_steps, seg.max_new_tokens) == (None, None, None)
    assert seg.data == str(Path(".").resolve())


def test_summary_rebuilt_from_predictions_of_the_selected_items(tmp_path):
    spec = get_benchmark("shapes-vqa")
    missing = [MissingImage("gone", "images/9.png", ("/d",))]
    data = BenchmarkData(items(4), missing, source="x")
    with pytest.raises(DataError, match=r"1 record\(s\) have no image; first: gone: image 'images/9.png'"):
        EvalRun.open(spec, data, settings(), tmp_path)
    records = [
        {"id": "q0", "correct": True, "groups": {"question_type": "colour"}, "steps": [{}], "kept_tokens": 6,
         "generated_tokens": 10, "timings": {"total": 1.0}},
        {"id": "q1", "correct": False, "groups": {"question_type": "colour"}, "steps": [], "kept_tokens": 0,
         "generated_tokens": 20, "timings": {"total": 3.0}},
        {"id": "q3", "correct": True, "groups": {"question_type": "colour"}, "steps": [{}, {}], "kept_tokens": 10,
         "generated_tokens": 30, "timings": {"total": 2.0}},
    ]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(UsageError, match="has predictions.jsonl but no run.json"):
        EvalRun.open(spec, data, settings(), tmp_path, skip_missing=True)
    (tmp_path / "run.json").write_text(json.dumps({"settings": settings().__dict__}))
    run = EvalRun.open(spec, data, settings(), tmp_path, limit=2, skip_missing=True)
    assert [i.id for i in run.todo] == []  # q0, q1 done; q3 lies beyond --limit 2
    summary = run.execute(lambda: pytest.fail("nothing to evaluate: the model must not load"))
    assert summary["metrics"]["accuracy"] == 0.5 and summary["metrics"]["n"] == 2
    assert summary["cost"] == {"second_look_rate": 0.5, "mean_visual_tokens": 6.0, "mean_generated_tokens": 15.0}
    assert summary["timing"]["seconds_per_sample"] == 2.0
    assert summary["counts"] == {"items": 5, "evaluated": 2, "missing_images": 1, "failed": 0, "limit": 2}
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    full = EvalRun.open(spec, data, settings(), tmp_path, skip_missing=True)
    assert [i.id for i in full.todo] == ["q2"]


def test_cost_of_runs_without_a_second_look_is_none_not_nan():
    assert cost_summary([{"steps": [], "kept_tokens": 0, "generated_tokens": 4}])["mean_visual_tokens"] is None
    assert cost_summary([]) == {"second_look_rate": None, "mean_visual_tokens": None, "mean_generated_tokens": None}


def test_segmentation_batches_write_masks(tmp_path, tiny_model):
    from seganswer_cli.data.shapes_datasets import write_synthetic
    from seganswer_cli.data.shapes_scenes import ShapesConfig

    write_synthetic(tmp_path / "data", "refseg", 3, ShapesConfig(width=64, height=48, min_size=8, max_size=20))
    spec = get_benchmark("shapes-refseg")
    data = spec.read(tmp_path / "data")
    s = RunSettings.create(spec, data, data_path=tmp_path / "data", split=None, model="tiny")
    notes = []
    summary = EvalRun.open(spec, data, s, tmp_path / "run").execute(
        lambda: tiny_model, batch_size=2, on_batch=lambda n, note: notes.append((n, note)))
    assert [n for n, _ in notes] == [2, 1] and notes[-1][1].startswith("cIoU ")
    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    from seganswer_cli.masks import decode_rle

    for record, item in zip(records, data.items, strict=True):
        mask = decode_rle(record["mask"])
        target = item.load_gt_mask()
        assert record["intersection"] == int((mask & target).sum()) and record["union"] == int((mask | target).sum())
    assert summary["metrics"]["n"] == 3 and np.isfinite(summary["metrics"]["ciou"])
