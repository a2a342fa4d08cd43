"""``seganswer eval BENCH``: a benchmark into a resumable run folder; ``eval report``: runs side by side.

``seganswer eval vstar --data DIR --out RUN`` is short for ``seganswer eval run vstar ...``: a first
word that is not one of the subcommands (``run``, ``report``, ``list``) is a benchmark name, so
scripts type the benchmark right after ``eval``. Library code: ``seganswer_cli.eval.runner``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from seganswer_cli.cli.options import (
    DEFAULT_MODEL,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelDefaultOpt,
    QuietOpt,
    load_model,
)

console = Console()
err_console = Console(stderr=True)


class BenchmarkFirstGroup(TyperGroup):
    """A group whose default command is ``run``: ``eval vstar ...`` resolves as ``eval run vstar ...``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=BenchmarkFirstGroup,
    no_args_is_help=True,
    subcommand_metavar="BENCH [OPTIONS] | COMMAND [ARGS]...",
    help="Evaluate on a benchmark: [bold]seganswer eval BENCH --data PATH --out RUN_DIR[/] "
    "(BENCH is vstar, pope, refcoco, shapes-vqa, ...: see [bold]seganswer eval list[/]); "
    "[bold]seganswer eval report RUN_DIR...[/] puts runs side by side.",
)


@app.command("run")
def run(
    bench: Annotated[str, typer.Argument(metavar="BENCH", help="Benchmark name (seganswer eval list shows them all).",
                                         show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: predictions.jsonl, summary.json, vis/. "
                                      "Rerunning into it resumes.", show_default=False)],
    data: Annotated[Path | None, typer.Option("--data", help="The benchmark's folder as distributed. Optional "
                                              "for shapes-*: generated from a held-out seed when omitted.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to evaluate (default: the benchmark's).")] = None,
    model: ModelDefaultOpt = DEFAULT_MODEL,
    roi: Annotated[str, typer.Option("--roi", help="Second look: mask (sparse segmented patches), bbox (box "
                                     "crop), none (no second look).")] = "mask",
    max_seg_steps: Annotated[int, typer.Option(help="Most <|seg|> rounds per question.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Most generated tokens per question.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples run through the model together.")] = 8,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N items (a later run without "
                                              "it resumes).")] = None,
    save_vis: Annotated[int, typer.Option("--save-vis", help="Write overlay PNGs (mask + answer) for the first "
                                          "N samples evaluated, into RUN_DIR/vis/.")] = 0,
    skip_missing: Annotated[bool, typer.Option("--skip-missing", help="Evaluate without records whose image "
                                               "is missing (counted, reported, out of the denominator).")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Evaluate a model on benchmark BENCH; predictions are appended as they come and a rerun resumes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from seganswer_cli.eval import get_benchmark
    from seganswer_cli.eval.runner import PREDICTIONS, EvalRun, RunSettings, running_note

    spec = get_benchmark(bench)
    chatty = not (quiet or as_json)
    read_kwargs = {"limit": limit} if data is None and spec.generates else {}
    bench_data = spec.read(data, split, **read_kwargs)
    settings = RunSettings.create(spec, bench_data, data_path=data, split=split, model=model, roi=roi,
                                  max_seg_steps=max_seg_steps, max_new_tokens=max_new_tokens, dtype=dtype)
    evaluation = EvalRun.open(spec, bench_data, settings, out, limit=limit, skip_missing=skip_missing)
    if bench_data.missing:
        err_console.print(f"[yellow]{len(bench_data.missing)} record(s) without an image left out[/] "
                          f"(--skip-missing); first: {bench_data.missing[0]}", highlight=False)
    todo = len(evaluation.todo)
    if chatty:
        loop = f" · roi {settings.roi} · max {max_new_tokens} new tokens" if spec.task == "qa" else ""
        err_console.print(f"[bold]eval {spec.name}[/] split {settings.split} · model {model}{loop}\n"
                          f"  data: {bench_data.source}\n"
                          f"  {len(evaluation.items)} items · {len(evaluation.items) - todo} already in "
                          f"{out / PREDICTIONS} · {todo} to do", highlight=False)

    def load():
        if chatty:
            err_console.print(f"loading model {model}", highlight=False)
        return load_model(model, device, dtype)

    with Progress(TextColumn(f"{spec.name}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeRemainingColumn(), console=err_console, disable=quiet) as progress:
        task = progress.add_task(spec.name, total=len(evaluation.items), completed=len(evaluation.items) - todo,
                                 note=running_note(spec, evaluation.results()))
        summary = evaluation.execute(load, batch_size=batch_size, save_vis=save_vis,
                                     on_batch=lambda n, note: progress.update(task, advance=n, note=note))
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    console.print(_summary_table(summary))
    if chatty:
        err_console.print(f"run folder: {out}", highlight=False)


@app.command("report")
def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folders written by seganswer eval.", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Put several runs side by side (e.g. --roi mask vs bbox vs none): one column per run."""
    from seganswer_cli.eval.runner import load_summary

    summaries = [load_summary(run) for run in runs]
    if as_json:
        print(json.dumps({"runs": summaries}, ensure_ascii=False))
        return
    console.print(_report_table(summaries))


@app.command("list")
def list_benchmarks(as_json: JsonOpt = False) -> None:
    """The benchmark names seganswer eval takes, with their splits and headline metric."""
    from seganswer_cli.eval import BENCHMARKS

    rows = [{"name": s.name, "task": s.task, "splits": list(s.splits), "default_split": s.default_split,
             "headline": s.headline, "needs_data": not s.generates, "description": s.description}
            for s in BENCHMARKS.values()]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("name", "task", "splits (default first)", "headline", "description")
    table.columns[0].no_wrap = True
    for row in rows:
        splits = [row["default_split"]] + [s for s in row["splits"] if s != row["default_split"]]
        table.add_row(row["name"], row["task"], ", ".join(splits), row["headline"], row["description"])
    console.print(table)


# -- tables -------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1 else f"{value:.4f}"
    return str(value)


def _rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of one summary: the headline first, intervals folded into their metric."""
    metrics = dict(summary.get("metrics", {}))
    headline = summary.get("headline", {}).get("metric")
    order = ([headline] if headline in metrics else []) + [k for k in metrics if k != headline]
    rows = []
    for key in order:
        if key.endswith(("_ci_low", "_ci_high")):
            continue
        text = _fmt(metrics[key])
        low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        if low is not None and high is not None:
            text += f" [{low:.3f}, {high:.3f}]"
        rows.append((key, text))
    cost = summary.get("cost") or {}
    labels = {"second_look_rate": "second-look rate", "mean_visual_tokens": "visual tokens (second look)",
              "mean_generated_tokens": "generated tokens"}
    rows += [(labels.get(k, k), _fmt(v)) for k, v in cost.items()]
    rows.append(("seconds / sample", _fmt(summary.get("timing", {}).get("seconds_per_sample"))))
    counts = summary.get("counts", {})
    limit = f" (--limit {counts['limit']})" if counts.get("limit") else ""
    rows.append(("evaluated", f"{counts.get('evaluated')} of {counts.get('items')}{limit}"))
    rows.append(("missing images", str(counts.get("missing_images", 0))))
    return rows


def _summary_table(summary: dict[str, Any]) -> Table:
    settings = summary.get("settings", {})
    loop = f" · roi {settings['roi']}" if settings.get("roi") else ""
    table = Table("metric", "value", title=f"{summary['benchmark']} · {summary['split']} · "
                  f"{Path(settings.get('model', '?')).name}{loop}", title_justify="left")
    for i, (label, value) in enumerate(_rows(summary)):
        table.add_row(f"[bold]{label}[/]" if i == 0 else label, f"[bold]{value}[/]" if i == 0 else value)
    return table


def _report_table(summaries: list[dict[str, Any]]) -> Table:
    table = Table("", *[s["run"] for s in summaries], title="runs side by side", title_justify="left")
    columns = [dict(_rows(s)) for s in summaries]
    for label, key in (("benchmark", "benchmark"), ("split", "split")):
        table.add_row(label, *[str(s.get(key)) for s in summaries])
    for label in ("model", "roi", "max_new_tokens"):
        table.add_row(label, *[_fmt(s.get("settings", {}).get(label)) for s in summaries])
    labels: list[str] = []
    for column in columns:
        labels += [label for label in column if label not in labels]
    for label in labels:
        table.add_row(label, *[column.get(label, "-") for column in columns])
    return table
