"""``seganswer plot RUN_DIR``: training curves of a run folder as a PNG (the paper's Figure 4 style)."""

import json
from pathlib import Path
from typing import Annotated

import typer

from seganswer_cli.cli.options import image_output
from seganswer_cli.errors import UsageError

#: What each stage's curves show by default (keys of metrics.jsonl records).
DEFAULT_METRICS = {
    "standin": ["loss", "lm", "focal", "dice", "val_giou", "val_ciou"],
    "stage1": ["loss", "lm", "focal", "dice", "val_giou", "val_ciou"],
    "stage2": ["loss", "grad_norm", "samples_per_s"],
    "stage3": ["reward", "accuracy", "format", "segment_rate", "view_tokens", "loss"],
}
COLOURS = [(40, 90, 225), (220, 40, 40), (40, 170, 70), (150, 60, 190), (245, 135, 30), (40, 160, 170)]


def plot(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A training run folder (holds settings.json "
                                            "and metrics.jsonl).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", callback=image_output, help="The image to write (.png, .jpg, "
                                      "...).", show_default=False)],
    metric: Annotated[list[str] | None, typer.Option("--metric", metavar="KEY", help="A metrics.jsonl key to plot; "
                                                     "repeat. Default: the stage's main curves.")] = None,
    window: Annotated[int, typer.Option(min=1, help="Moving-average window (steps).")] = 5,
) -> None:
    """Plot a run's training curves as an image.

    Raw values pale, their moving average bold, one panel per metric.

    Example:

    \b
        seganswer plot runs/stage1 --out curves.png
        seganswer plot runs/stage3 --out reward.png --metric reward --metric accuracy --window 10
    """
    from seganswer_cli.viz import curve_panel, curves_figure, save_image

    metrics_path, settings_path = run_dir / "metrics.jsonl", run_dir / "settings.json"
    if not metrics_path.is_file():
        raise UsageError(f"{run_dir} is not a run folder: no metrics.jsonl")
    records = []
    for n, line in enumerate(metrics_path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                raise UsageError(f"{metrics_path}:{n} is not JSON") from None
    stage = json.loads(settings_path.read_text()).get("stage") if settings_path.is_file() else None
    names = metric or DEFAULT_METRICS.get(stage, ["loss"])
    panels = []
    for i, name in enumerate(names):
        points = [(r["step"], float(r[name])) for r in records if isinstance(r.get(name), (int, float)) and "step" in r]
        if not points and metric:
            known = sorted({k for r in records for k, v in r.items() if isinstance(v, (int, float))})
            raise UsageError(f"no {name!r} in {metrics_path}; numeric keys: {', '.join(known)}")
        if points:
            xs, ys = zip(*points)
            smooth = window if len(points) >= 2 * window else 1  # a handful of evaluations: no smoothing
            panels.append(curve_panel(list(xs), list(ys), name, COLOURS[i % len(COLOURS)], window=smooth))
    if not panels:
        raise UsageError(f"nothing to plot in {metrics_path}")
    save_image(curves_figure(panels), out)
    print(f"wrote {out} ({len(panels)} curves, {len(records)} records)")
