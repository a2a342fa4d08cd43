"""``seganswer eval sheet`` (contact sheets of trajectories) and ``eval report --markdown``, on two
``--limit 4`` runs of the tiny model on the generated shapes-vqa (``--roi mask`` and ``--roi none``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from seganswer_cli.cli import app
from seganswer_cli.errors import DataError, UsageError
from seganswer_cli.viz import SHEET_GAP, SHEET_TITLE, TILE_SIZE

runner = CliRunner()
QA = ["--model", "tiny", "--limit", "4", "--max-new-tokens", "4", "--batch-size", "4", "--quiet"]


def invoke(*args):
    return runner.invoke(app, ["eval", *map(str, args)])


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def sheet_size(rows: int, columns: int, titled: bool) -> tuple[int, int]:
    w, h = TILE_SIZE
    return (columns * w + (columns + 1) * SHEET_GAP,
            (SHEET_TITLE if titled else 0) + rows * h + (rows + 1) * SHEET_GAP)


def disc(image: Image.Image, k: int) -> np.ndarray:
    yy, xx = np.mgrid[: image.height, : image.width]
    return (yy - image.height // 3 - 20 * k) ** 2 + (xx - image.width // 2) ** 2 < (20 + 10 * k) ** 2


def give_steps(run: Path, model) -> None:
    """Random tiny weights never emit ``<|seg|>``, so give the first three predictions the step the loop
    records for a disc mask (RLE, box and kept tokens from the model's own ``second_look``), and mark
    the first of them right: the sheet then has a second look to draw and both kinds of answers."""
    from seganswer_cli.eval import get_benchmark
    from seganswer_cli.masks import encode_rle

    roi = json.loads((run / "run.json").read_text())["settings"]["roi"]
    items = get_benchmark("shapes-vqa").read(None, limit=4).items
    path = run / "predictions.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for k, (item, record) in enumerate(zip(items[:3], records)):
        record["correct"] = k == 0
        if roi == "none":  # answered directly: never a step
            continue
        image = item.load_image()
        mask = disc(image, k)
        view = model.second_look(image, mask, mode=roi)[0]
        record["steps"] = [{"mask": encode_rle(mask), "mask_area": int(mask.sum()),
                            "crop_box": list(view.crop_box), "kept_tokens": view.num_tokens, "iou": 0.8,
                            "object_score": 0.9, "fallback": None}]
        record["kept_tokens"] = view.num_tokens
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def qa_runs(tmp_path_factory, tiny_model):
    """{"mask": RUN_DIR, "none": RUN_DIR}: ``eval shapes-vqa --model tiny --limit 4`` per roi mode (the
    CLI's loader serves the session's tiny model), then ``give_steps``."""
    root = tmp_path_factory.mktemp("qa_runs")
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("seganswer_cli.cli.eval.load_model", lambda spec, device="auto", dtype="auto": tiny_model)
        for roi in ("mask", "none"):
            runs[roi] = root / roi
            result = invoke("shapes-vqa", "--roi", roi, "--out", runs[roi], *QA)
            assert result.exit_code == 0, result.output
            give_steps(runs[roi], tiny_model)
    return runs


def test_sheet_puts_runs_of_the_same_questions_side_by_side(qa_runs, tmp_path):
    out = tmp_path / "figs" / "sheet.png"
    result = invoke("sheet", qa_runs["mask"], qa_runs["none"], "--out", out, "--right", 1, "--wrong", 2)
    assert result.exit_code == 0, result.output
    assert "one row per question, one column per run" in result.stdout and "6 tiles" in result.stdout
    # Rows: the first run's 1 right and first 2 wrong answers; columns: mask, none.
    assert png_size(out) == sheet_size(rows=3, columns=2, titled=True)


def test_sheet_plain_grid(qa_runs, tmp_path):
    out = tmp_path / "sheet.png"
    result = invoke("sheet", qa_runs["mask"], "--out", out, "--columns", 3)
    assert result.exit_code == 0, result.output
    # Only 1 of the 4 answers is right: 1 + 3 tiles, 3 to a row.
    assert "4 tiles, 2 x 3 (grid)" in result.stdout
    assert png_size(out) == sheet_size(rows=2, columns=3, titled=False)


def test_tiles_redraw_what_the_model_saw(qa_runs, tiny_model, tmp_path):
    from seganswer_cli.eval.sheet import image_processor_for, open_question_run, question_tile
    from seganswer_cli.viz import kept_cells_view

    processor = image_processor_for("tiny", {})
    assert processor.size == tiny_model.image_processor.size  # the pixel budget
    tiny_model.processor.save_pretrained(tmp_path / "model" / "mllm")  # a model folder, weights left out
    assert image_processor_for(str(tmp_path / "model"), {}).size == tiny_model.image_processor.size

    run = open_question_run(qa_runs["mask"])
    assert [a.index for a in run.pick(1, 2)] == [0, 1, 2]
    first = run.answered[0]
    tile = question_tile(run, first, processor)
    image = first.item.load_image()
    expected = kept_cells_view(tiny_model.second_look(image, disc(image, 0), mode="mask")[0])
    assert np.array_equal(np.asarray(tile.second_look), np.asarray(expected))  # rebuilt without the model
    assert tile.correct and tile.look_caption == f"second look: {first.record['kept_tokens']} tokens"
    assert tile.steps[0].mask.sum() == first.record["steps"][0]["mask_area"]
    # No image processor at hand: the recorded box, background painted.
    x0, y0, x1, y1 = first.record["steps"][0]["crop_box"]
    crop = question_tile(run, first, None)
    assert crop.second_look.size == (x1 - x0, y1 - y0) and "(box crop)" in crop.look_caption

    none = open_question_run(qa_runs["none"])
    for answered in none.answered:
        tile = question_tile(none, answered, processor)
        assert tile.second_look is None and tile.steps == [] and tile.look_caption == "no second look (--roi none)"
    tile = question_tile(run, run.answered[3], processor)  # the mask run's fourth question never segmented
    assert tile.second_look is None and tile.steps == [] and "answered from the first look" in tile.look_caption


def test_sheet_bad_input_is_one_line(qa_runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("sheet", empty, "--out", tmp_path / "s.png")
    assert isinstance(result.exception, DataError) and "not a seganswer eval run folder" in str(result.exception)

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(qa_runs["mask"] / "run.json", unfinished)
    result = invoke("sheet", unfinished, "--out", tmp_path / "s.png")
    assert isinstance(result.exception, DataError) and "no predictions yet" in str(result.exception)

    segmentation = tmp_path / "refseg"
    segmentation.mkdir()
    (segmentation / "run.json").write_text(json.dumps({"settings": {"benchmark": "shapes-refseg", "split": "test"}}))
    result = invoke("sheet", segmentation, "--out", tmp_path / "s.png")
    assert isinstance(result.exception, UsageError) and "referring segmentation" in str(result.exception)

    result = invoke("sheet", qa_runs["mask"], "--out", tmp_path / "s.svg")
    assert isinstance(result.exception, UsageError) and "unknown image extension '.svg'" in str(result.exception)
    result = invoke("sheet", qa_runs["mask"], "--out", tmp_path / "s.png", "--right", 0, "--wrong", 0)
    assert isinstance(result.exception, UsageError) and "nothing to draw" in str(result.exception)
    assert not list(tmp_path.glob("s.*"))

    out = subprocess.run([sys.executable, "-m", "seganswer_cli", "eval", "sheet", str(empty), "--out",
                          str(tmp_path / "s.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and "no run.json" in out.stderr


def test_report_markdown_has_accuracy_interval_tokens_and_seconds(qa_runs):
    result = invoke("report", qa_runs["mask"], qa_runs["none"], "--markdown")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"|  | {qa_runs['mask']} | {qa_runs['none']} |" and lines[1] == "|---|---|---|"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert {"roi", "accuracy", "visual tokens (second look)", "seconds / sample"} <= set(rows)
    assert "| mask | none |" in rows["roi"]
    assert rows["accuracy"].count("[") == 2  # 95% interval beside each run's accuracy
    result = invoke("report", qa_runs["mask"], "--markdown", "--json")
    assert isinstance(result.exception, UsageError)
