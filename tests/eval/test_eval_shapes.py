"""The shapes world as benchmarks: generated from the held-out seed or read from a synth folder, scored."""

from __future__ import annotations

import numpy as np
import pytest

from seganswer_cli.data.shapes_datasets import generate_samples, write_synthetic
from seganswer_cli.data.shapes_scenes import ShapesConfig
from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.eval import BENCHMARKS, get_benchmark
from seganswer_cli.eval.items import SampleResult
from seganswer_cli.eval.shapes import DEFAULT_CONFIG, HELD_OUT_SEED

SMALL = ShapesConfig(width=96, height=64, min_size=8, max_size=24)


def test_registered_and_generate_without_data():
    assert {"shapes-vqa", "shapes-refseg"} <= set(BENCHMARKS)
    spec = get_benchmark("shapes-vqa")
    assert spec.generates and spec.splits == ("test",) and spec.default_split == "test"
    with pytest.raises(UsageError, match="vstar needs --data"):
        get_benchmark("vstar").read(None)
    with pytest.raises(UsageError, match="unknown split 'val'"):
        spec.read(None, "val", limit=1)


def test_generated_limit_is_a_prefix_of_the_full_benchmark():
    spec = get_benchmark("shapes-vqa")
    first = spec.read(None, limit=3).items
    assert len(first) == 3 and len(spec.read(None, limit=5).items) == 5
    expected = list(generate_samples("vqa", 3, DEFAULT_CONFIG, seed=HELD_OUT_SEED))
    assert [i.id for i in first] == [s.id for s in expected]
    assert [i.question for i in first] == [s.question for s in expected]
    assert first[0].load_image().size == (DEFAULT_CONFIG.width, DEFAULT_CONFIG.height)


def test_vqa_items_from_a_synth_folder(tmp_path):
    write_synthetic(tmp_path, "vqa", 8, SMALL, seed=4)
    samples = list(generate_samples("vqa", 8, SMALL, seed=4))
    data = get_benchmark("shapes-vqa").read(tmp_path)
    assert data.missing == [] and data.source == str(tmp_path / "records.jsonl")
    for item, sample in zip(data.items, samples, strict=True):
        assert item.id == sample.id and item.question == sample.question
        assert item.groups["question_type"] == sample.extra["question_type"]
        if sample.options:  # multiple choice: V*-style prompt, scored by letter
            assert item.answer_kind == "choice" and item.answer == sample.answer_letter
            assert item.options[item.answer] == sample.answer
            assert f"({item.answer}) {sample.answer}" in item.prompt and "option's letter" in item.prompt
        else:
            assert item.answer_kind == "text" and item.prompt == sample.question and item.answer == sample.answer
    spec = get_benchmark("shapes-vqa")
    right = [spec.score(f"<answer>{item.answer}</answer>", item) for item in data.items]
    assert all(r.correct for r in right)
    summary = spec.summarize(right[:2] + [spec.score("<answer>zzz</answer>", data.items[2])])
    assert summary["accuracy"] == pytest.approx(2 / 3)
    assert any(key.startswith("accuracy/") for key in summary)


def test_refseg_items_carry_the_mask(tmp_path):
    write_synthetic(tmp_path, "refseg", 3, SMALL, seed=2)
    samples = list(generate_samples("refseg", 3, SMALL, seed=2))
    spec = get_benchmark("shapes-refseg")
    items = spec.read(tmp_path).items
    for item, sample in zip(items, samples, strict=True):
        assert item.question == sample.expression and item.prompt == f"Can you segment {sample.expression} in this image?"
        assert np.array_equal(item.load_gt_mask(), sample.mask.decode())
    perfect = spec.score(items[0].load_gt_mask(), items[0])
    assert perfect.correct and perfect.intersection == perfect.union > 0


def test_refseg_summary_splits_single_and_multiple_targets():
    results = [
        SampleResult("a", True, "mask", "mask", groups={"targets": "single"}, intersection=30, union=40),
        SampleResult("b", False, "mask", "mask", groups={"targets": "single"}, intersection=0, union=20),
        SampleResult("c", True, "mask", "mask", groups={"targets": "multiple"}, intersection=9, union=10),
    ]
    summary = get_benchmark("shapes-refseg").summarize(results)
    assert summary["ciou"] == pytest.approx(39 / 70)
    assert summary["ciou/single"] == pytest.approx(30 / 60) and summary["ciou/multiple"] == pytest.approx(0.9)
    assert summary["giou"] == pytest.approx((0.75 + 0 + 0.9) / 3)


def test_folder_problems_name_the_file(tmp_path):
    write_synthetic(tmp_path / "ref", "refseg", 2, SMALL, seed=0)
    with pytest.raises(DataError, match="kind is 'refseg'; shapes-vqa needs"):
        get_benchmark("shapes-vqa").read(tmp_path / "ref")
    (tmp_path / "ref" / "images" / "000000.png").unlink()
    data = get_benchmark("shapes-refseg").read(tmp_path / "ref")
    assert len(data.items) == 1 and data.missing[0].expected == "images/000000.png"
    records = tmp_path / "ref" / "records.jsonl"
    records.write_text(records.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"records.jsonl: line 3 is not JSON"):
        get_benchmark("shapes-refseg").read(tmp_path / "ref")
