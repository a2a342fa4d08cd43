"""``seganswer plot``: a run folder's curves as a PNG; bad folders and metrics are one line."""

import json

from PIL import Image
from typer.testing import CliRunner

from seganswer_cli.cli import app
from seganswer_cli.viz import moving_average

runner = CliRunner()


def _run_folder(tmp_path, stage="stage3"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "settings.json").write_text(json.dumps({"stage": stage}))
    lines = [{"kind": "train", "step": s, "reward": 0.1 * s, "accuracy": 0.05 * s, "format": 1.0, "loss": 1 / s}
             for s in range(1, 13)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return tmp_path


def test_plot_writes_one_panel_per_metric(tmp_path):
    run = _run_folder(tmp_path / "run")
    result = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "c.png"), "--metric", "reward",
                                 "--metric", "accuracy"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "c.png") as img:
        assert img.size == (720, 220)  # two 360 x 220 panels side by side
    default = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "d.png")])
    assert default.exit_code == 0 and "4 curves" in default.output  # the stage's curves present in the log


def test_plot_bad_input(tmp_path):
    result = runner.invoke(app, ["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0 and "no metrics.jsonl" in str(result.exception)
    run = _run_folder(tmp_path / "run")
    result = runner.invoke(app, ["plot", str(run), "--out", str(tmp_path / "x.png"), "--metric", "nope"])
    assert result.exit_code != 0 and "numeric keys" in str(result.exception)


def test_moving_average():
    assert moving_average([1.0, 3.0, 5.0], 1) == [1.0, 3.0, 5.0]
    assert moving_average([1.0, 3.0, 5.0], 3) == [1.0, 2.0, 3.0]
