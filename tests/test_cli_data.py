"""`seganswer data synth` then `seganswer data inspect`, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from seganswer_cli.cli import app

runner = CliRunner()
SEGANSWER = Path(sys.executable).parent / "seganswer"


def test_synth_then_inspect(tmp_path):
    out = tmp_path / "shapes"
    result = runner.invoke(app, ["data", "synth", "--kind", "refseg", "--n", "6", "--size", "96x64", "--seed", "3",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "seganswer_data.json").is_file() and len(list((out / "images").glob("*.png"))) == 6
    manifest = json.loads((out / "seganswer_data.json").read_text())
    assert manifest["settings"]["seed"] == 3 and manifest["settings"]["config"]["width"] == 96

    sheet = tmp_path / "sheet.png"
    result = runner.invoke(app, ["data", "inspect", str(out), "--json", "--check", "--contact-sheet", str(sheet)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["format"] == "seganswer" and summary["count"] == 6 and summary["skipped"] == 0
    assert summary["kinds"] == {"seg": 6} and summary["examples"][0]["expression"]
    assert sheet.is_file() and sheet.stat().st_size > 0

    result = runner.invoke(app, ["data", "inspect", str(out), "--limit", "2"])
    assert result.exit_code == 0 and "seganswer" in result.stdout and "limit reached" in result.stdout


def test_synth_vqa_json_and_refuses_non_empty_out(tmp_path):
    out = tmp_path / "qa"
    result = runner.invoke(app, ["data", "synth", "--kind", "vqa", "--n", "3", "--size", "80x80", "--out", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 3
    result = runner.invoke(app, ["data", "inspect", str(out), "--json"])
    assert json.loads(result.stdout)["kinds"] == {"vqa": 3}
    again = subprocess.run([str(SEGANSWER), "data", "synth", "--n", "1", "--out", str(out)],
                           capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_synth_named_world_with_overrides(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["data", "synth", "--world", "demo", "--kind", "qseg", "--n", "2", "--clutter", "0",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    assert (config["width"], config["height"], config["clutter"]) == (640, 480, 0)
    assert config["question_types"] == ["colour", "shape"]
    assert json.loads((out / "seganswer_data.json").read_text())["kind"] == "qseg"
    bad = runner.invoke(app, ["data", "synth", "--world", "moon", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "Invalid value for '--world'" in bad.output and "'vstar-like'" in bad.output


def test_inspect_bad_record_stop_and_skip(tmp_path):
    out = tmp_path / "shapes"
    assert runner.invoke(app, ["data", "synth", "--n", "3", "--size", "64x64", "--out", str(out)]).exit_code == 0
    (out / "images" / "000001.png").write_bytes(b"garbage")
    stop = subprocess.run([str(SEGANSWER), "data", "inspect", str(out), "--check"], capture_output=True, text=True)
    assert stop.returncode == 1
    assert "000001.png" in stop.stderr and "record shapes:refseg:0:1" in stop.stderr
    skip = subprocess.run([str(SEGANSWER), "data", "inspect", str(out), "--check", "--on-error", "skip", "--json"],
                          capture_output=True, text=True)
    assert skip.returncode == 0, skip.stderr
    summary = json.loads(skip.stdout)
    assert summary["count"] == 2 and summary["skipped"] == 1
    assert "cannot read image" in summary["skipped_records"][0]["reason"]


def test_inspect_unknown_format_and_bad_size(tmp_path):
    result = subprocess.run([str(SEGANSWER), "data", "inspect", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "--format" in result.stderr
    result = subprocess.run([str(SEGANSWER), "data", "synth", "--size", "big", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "WIDTHxHEIGHT" in result.stderr


def test_data_cli_module_imports_no_heavy_library():
    code = ("import sys, seganswer_cli.cli.data; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'pycocotools', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_synth_vstar_layout_is_read_by_the_vstar_reader_both_ways(tmp_path):
    """``--layout vstar``: test_questions.jsonl with the generator's option order, and per-image annotations
    with the right option first; the V* reader gives the same questions and right answers from either."""
    import shutil

    from seganswer_cli.data.shapes_datasets import generate_samples
    from seganswer_cli.data.shapes_scenes import ShapesConfig
    from seganswer_cli.eval import get_benchmark

    out = tmp_path / "vstar_bench"
    result = runner.invoke(app, ["data", "synth", "--kind", "vqa", "--layout", "vstar", "--n", "6", "--size",
                                 "96x80", "--seed", "5", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layout"] == "vstar"
    published = get_benchmark("vstar").read(out).items
    assert len(published) == 6 and all(len(item.options) >= 2 for item in published)
    # the questions are those shapes-vqa asks with this seed and world
    config = ShapesConfig(width=96, height=80, max_size=64, min_size=16)
    assert [i.question for i in published] == [s.question for s in generate_samples("vqa", 6, config, seed=5)]
    annotation = json.loads((out / published[0].groups["category"] / "shapes_000000.json").read_text())
    assert annotation["options"][0] == published[0].options[published[0].answer]  # right option first
    (out / "test_questions.jsonl").unlink()
    annotated = get_benchmark("vstar").read(out).items
    # read subset by subset, so in another order
    assert sorted((i.question, i.options[i.answer]) for i in annotated) == sorted(
        (i.question, i.options[i.answer]) for i in published)
    shutil.rmtree(out)
    result = runner.invoke(app, ["data", "synth", "--kind", "refseg", "--layout", "vstar", "--out", str(out)])
    assert result.exit_code != 0 and "use it with --kind vqa" in str(result.exception)


def test_synth_wide_world_and_pope_layout(tmp_path):
    """``--world wide`` draws every scene's own canvas (``--size`` fixes one); ``--layout pope`` writes the
    three settings' question files that ``eval pope`` reads, a yes and a no per scene and setting."""
    from seganswer_cli.eval import get_benchmark

    wide = tmp_path / "wide"
    result = runner.invoke(app, ["data", "synth", "--world", "wide", "--kind", "vqa", "--n", "8", "--seed", "2",
                                 "--out", str(wide), "--json"])
    assert result.exit_code == 0, result.output
    sizes = {(r["width"], r["height"]) for r in map(json.loads, (wide / "records.jsonl").read_text().splitlines())}
    assert len(sizes) == 8
    pope = tmp_path / "pope"
    result = runner.invoke(app, ["data", "synth", "--world", "wide", "--kind", "vqa", "--layout", "pope", "--n", "5",
                                 "--size", "200x160", "--out", str(pope), "--json"])
    assert result.exit_code == 0, result.output
    items = get_benchmark("pope").read(pope).items
    assert len(items) == 30 and {i.groups["setting"] for i in items} == {"random", "popular", "adversarial"}
    from PIL import Image

    with Image.open(pope / "images" / "shapes_pope_000000.png") as image:
        assert image.size == (200, 160)
