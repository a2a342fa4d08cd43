"""``seganswer eval BENCH``: a benchmark into a resumable run folder; ``eval report``: runs side by side;
``eval sheet``: a contact sheet of right and wrong trajectories.

``seganswer eval vstar --data DIR --out RUN`` is short for ``seganswer eval run vstar ...``: a first
word that is not one of the subcommands (``run``, ``report``, ``sheet``, ``list``) is a benchmark name,
so scripts type the benchmark right after ``eval``. Library code: ``seganswer_cli.eval.runner`` and
``seganswer_cli.eval.sheet``.
"""

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from seganswer_cli.cli.data import OnErrorChoice
from seganswer_cli.cli.options import (
    DEFAULT_MODEL,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelDefaultOpt,
    OpeningOpt,
    QuietOpt,
    RoiOpt,
    folder_output,
    image_output,
    load_model,
    note_generation_config,
    resolve_device,
)
from seganswer_cli.errors import UsageError

console = Console()
err_console = Console(stderr=True)


class BenchmarkFirstGroup(TyperGroup):
    """A group whose default command is ``run``: ``eval vstar ...`` resolves as ``eval run vstar ...``."""

    def resolve_command(self, ctx, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=BenchmarkFirstGroup,
    no_args_is_help=True,
    subcommand_metavar="BENCH [OPTIONS] | COMMAND [ARGS]...",
    help="""Evaluate on benchmarks, compare runs, draw sheets.

    BENCH: vstar, pope, refcoco, shapes-vqa, ... (seganswer eval list).
    seganswer eval BENCH ... is short for seganswer eval run BENCH ...; eval report puts runs side by
    side; eval sheet draws right and wrong answers.

    Example:

    \b
        seganswer eval shapes-vqa --out runs/shapes-vqa
        seganswer eval vstar --data vstar_bench --out runs/vstar --model my-model
        seganswer eval report runs/vstar runs/vstar-bbox
        seganswer eval sheet runs/vstar --out sheet.png
    """,
)

#: ``--option-order`` and ``--protocol``: V*'s ``OPTION_ORDERS`` and ``PROTOCOL_VARIANTS`` (eval/vstar.py;
#: spelled here so that --help need not load the registry; tests/test_cli_help.py checks they agree).
OptionOrder = Literal["shuffled", "fixed"]
Protocol = Literal["generate", "likelihood"]


@app.command("run")
def run(
    bench: Annotated[str, typer.Argument(metavar="BENCH", help="Benchmark name (seganswer eval list shows them all).",
                                         show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", callback=folder_output, help="Run folder: predictions.jsonl, "
                                      "summary.json, vis/. Rerunning into it resumes.", show_default=False)],
    data: Annotated[Path | None, typer.Option("--data", help="The benchmark's folder as distributed. Optional "
                                              "for shapes-*: generated from a held-out seed when omitted.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to evaluate (default: the benchmark's).")] = None,
    model: ModelDefaultOpt = DEFAULT_MODEL,
    roi: RoiOpt = "mask",
    opening: OpeningOpt = "model",
    masks: Annotated[Literal["model", "gt"], typer.Option("--masks", help="Mask of the second look: model (SAM 2.1, from the "
                                       "<|seg|> state) or gt (the question's annotated region, where the "
                                       "benchmark has one: the oracle-grounding ablation).")] = "model",
    max_seg_steps: Annotated[int, typer.Option(min=0, help="Most <|seg|> rounds per question.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most generated tokens per question.")] = 256,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples run through the model together.")] = 8,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N items (a later run without "
                                              "it resumes).")] = None,
    save_vis: Annotated[int, typer.Option("--save-vis", min=0, help="Write overlay PNGs (mask + answer) for the first "
                                          "N samples evaluated, into RUN_DIR/vis/.")] = 0,
    option_order: Annotated[OptionOrder | None, typer.Option("--option-order", help="vstar: shuffled (default: the "
                                                     "published order, or a seeded one for annotation-only copies) "
                                                     "or fixed (the right option first: measures position bias).",
                                                     show_default=False)] = None,
    protocol: Annotated[Protocol | None, typer.Option("--protocol", help="vstar: generate (default: the answer the "
                                                 "model writes) or likelihood (the official script's: each "
                                                 "option scored as the final answer).", show_default=False)] = None,
    skip_missing: Annotated[bool, typer.Option("--skip-missing", help="Evaluate without records whose image "
                                               "is missing (counted, reported, out of the denominator).")] = False,
    on_error: Annotated[OnErrorChoice, typer.Option("--on-error", help="A sample whose image does not decode: "
                                                    "skip (recorded as failed with the reason, left out of the "
                                                    "metrics, tried again by a rerun) or stop (after the good "
                                                    "samples of its batch are written).")] = OnErrorChoice.skip,
    judge: Annotated[str | None, typer.Option("--judge", help="Judge model, for benchmarks whose protocol "
                                              "uses one (docs/evaluation.md, Judge): an OpenAI-compatible "
                                              "endpoint (http://host:port/v1) or a local causal-LM folder. "
                                              "Replies are cached in RUN_DIR/judge_cache.jsonl.")] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="The model name the --judge "
                                                    "endpoint serves. API key: $SEGANSWER_JUDGE_API_KEY, "
                                                    "else $OPENAI_API_KEY.")] = None,
    judge_timeout: Annotated[float, typer.Option("--judge-timeout", min=0.1, help="Seconds a judge call may "
                                                 "take; failed calls are retried with backoff.")] = 60.0,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Evaluate a model on benchmark BENCH (resumable).

    Predictions are appended to RUN_DIR as they come; a rerun into it resumes.

    Example:

    \b
        seganswer eval run shapes-vqa --out runs/shapes-vqa --limit 50
        seganswer eval vstar --data vstar_bench --out runs/vstar --roi bbox --batch-size 16
        seganswer eval pope --data pope --out runs/pope --json
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from seganswer_cli.eval import get_benchmark
    from seganswer_cli.eval.judge import JudgeConfig, check_protocol, client_for
    from seganswer_cli.eval.runner import PREDICTIONS, RUN_FILE, EvalRun, RunSettings, running_note

    spec = get_benchmark(bench)
    chatty = not (quiet or as_json)
    if judge_model is not None and judge is None:
        raise UsageError("--judge-model names the model of a --judge endpoint; give --judge too")
    judge_config = None
    if judge is not None:
        check_protocol(spec.name, spec.protocol.judge)
        judge_config = JudgeConfig.from_options(judge, judge_model)
    read_kwargs = {"limit": limit} if data is None and spec.generates else {}
    if spec.option_orders:
        read_kwargs["option_order"] = option_order = option_order or spec.option_orders[0]
    elif option_order is not None:
        raise UsageError(f"--option-order applies to benchmarks that offer an order (vstar), not {spec.name}")
    if spec.protocol_variants:
        protocol = protocol or spec.protocol_variants[0]
        if protocol not in spec.protocol_variants:
            raise UsageError(f"unknown --protocol {protocol!r} for {spec.name}; choose from "
                             f"{', '.join(spec.protocol_variants)}")
    elif protocol is not None:
        raise UsageError(f"--protocol applies to benchmarks with scoring variants (vstar), not {spec.name}")
    bench_data = spec.read(data, split, **read_kwargs)
    settings = RunSettings.create(spec, bench_data, data_path=data, split=split, model=model, roi=roi,
                                  masks=masks, max_seg_steps=max_seg_steps, max_new_tokens=max_new_tokens, dtype=dtype,
                                  opening=None if opening == "model" else opening,
                                  option_order=option_order, protocol=protocol, judge=judge_config)
    judge_client = None
    if judge_config is not None:
        local = judge_config.kind != "http"
        judge_client = client_for(judge_config, timeout=judge_timeout, device=resolve_device(device) if local else None)
    fresh = not (out / RUN_FILE).is_file()
    if judge_client is not None and fresh:
        judge_client.probe()  # before the folder is written, so a fixed --judge-model can reuse it
    evaluation = EvalRun.open(spec, bench_data, settings, out, limit=limit, skip_missing=skip_missing,
                              on_error=on_error.value)
    if bench_data.missing:
        err_console.print(f"[yellow]{len(bench_data.missing)} record(s) without an image left out[/] "
                          f"(--skip-missing); first: {bench_data.missing[0]}", highlight=False)
    todo = len(evaluation.todo)
    if chatty:
        oracle = " · ground-truth masks" if settings.masks == "gt" else ""
        oracle += " · forced opening" if settings.opening == "forced" else ""
        loop = f" · roi {settings.roi}{oracle} · max {max_new_tokens} new tokens" if spec.task == "qa" else ""
        err_console.print(f"[bold]eval {spec.name}[/] split {settings.split} · model {model}{loop}\n"
                          f"  data: {bench_data.source}\n"
                          f"  {len(evaluation.items)} items · {len(evaluation.items) - todo} already in "
                          f"{out / PREDICTIONS} · {todo} to do", highlight=False)
    if judge_config is not None:
        again = len(evaluation.judge_failed)
        if chatty:
            served = f" ({judge_config.model})" if judge_config.model else ""
            retry = f" · {again} earlier failure(s) to ask again" if again else ""
            err_console.print(f"  judge: {judge_config.target}{served} · asked {spec.protocol.judge}{retry}",
                              highlight=False)
        if not fresh and (todo or again):
            judge_client.probe()

    def load():
        if chatty:
            err_console.print(f"loading model {model}", highlight=False)
        loaded = load_model(model, device, dtype)
        if chatty:
            note_generation_config(loaded, err_console)
        return loaded

    with Progress(TextColumn(f"{spec.name}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
                  TimeRemainingColumn(), console=err_console, disable=quiet) as progress:
        task = progress.add_task(spec.name, total=len(evaluation.items), completed=len(evaluation.items) - todo,
                                 note=running_note(spec, evaluation.results()))
        summary = evaluation.execute(load, batch_size=batch_size, save_vis=save_vis, judge_client=judge_client,
                                     on_batch=lambda n, note: progress.update(task, advance=n, note=note))
    failed = summary["counts"]["failed"]
    if failed:
        first = summary["failed"][0]
        err_console.print(f"[yellow]{failed} sample(s) failed[/] (recorded in {out / PREDICTIONS} with the reason, "
                          f"left out of the metrics; a rerun tries them again); first: {first['id']}: "
                          f"{first['reason']}", highlight=False, soft_wrap=True)
    judged = summary.get("judge") or {}
    if judged.get("judge_failed"):
        down = f"; {evaluation.judge.down}" if evaluation.judge and evaluation.judge.down else ""
        err_console.print(f"[yellow]{judged['judge_failed']} judge call(s) failed[/]: those samples are scored by "
                          f"the rules (judge_failed in {out / PREDICTIONS}); rerun to ask again{down}", highlight=False)
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
        return
    console.print(_summary_table(summary))
    if chatty:
        err_console.print(f"run folder: {out}", highlight=False)


@app.command("report")
def report(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Run folders written by seganswer eval.",
                                               show_default=False)],
    as_json: JsonOpt = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown (to paste into "
                                           "docs) instead of drawing it.")] = False,
) -> None:
    """Put several runs side by side, one column per run.

    For instance --roi mask vs bbox vs none.

    Question runs of one benchmark and split are also compared with the first run, question by
    question (exact McNemar test).

    Example:

    \b
        seganswer eval report runs/vstar-mask runs/vstar-bbox runs/vstar-none
        seganswer eval report runs/* --markdown
    """
    from dataclasses import asdict

    from seganswer_cli.eval.runner import load_summary

    if as_json and markdown:
        raise UsageError("--json and --markdown print different things; give one")
    summaries = [load_summary(run) for run in runs]
    for summary, paired in zip(summaries, _paired_with_first(summaries)):
        if paired is not None:
            summary["paired_with_first"] = asdict(paired)
    if as_json:
        print(json.dumps({"runs": summaries}, ensure_ascii=False))
        return
    header, rows = _report_rows(summaries)
    if markdown:
        print(_markdown_table(header, rows))
        return
    table = Table(*header, title="runs side by side", title_justify="left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("sheet")
def sheet(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR", help="Question run folders written by "
                                               "seganswer eval (e.g. one per --roi).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", callback=image_output, help="The image to write (.png, "
                                      ".jpg, ...).", show_default=False)],
    right: Annotated[int, typer.Option("--right", min=0, help="Correct answers to draw (the first in item "
                                       "order).")] = 4,
    wrong: Annotated[int, typer.Option("--wrong", min=0, help="Wrong answers to draw (the first in item "
                                       "order).")] = 4,
    columns: Annotated[int | None, typer.Option("--columns", min=1, help="Tiles per row of a plain grid. "
                                                "Default: runs of the same questions side by side (one row "
                                                "per question, one column per run), else 4.")] = None,
) -> None:
    """Draw a contact sheet of right and wrong trajectories.

    Per answered question: the image with the predicted mask, the second look the model was shown,
    the question, the gold answer and the model's.

    Example:

    \b
        seganswer eval sheet runs/shapes-vqa --out sheet.png
        seganswer eval sheet runs/vstar-mask runs/vstar-none --out compare.png --right 2 --wrong 6
    """
    from seganswer_cli.eval.sheet import contact_sheet_of_runs
    from seganswer_cli.viz import save_image

    drawn = contact_sheet_of_runs(runs, right=right, wrong=wrong, columns=columns)
    save_image(drawn.image, out)
    layout = "one row per question, one column per run" if drawn.layout == "compare" else "grid"
    print(f"wrote {out}: {drawn.tiles} tiles, {drawn.rows} x {drawn.columns} ({layout}), "
          f"{drawn.image.width}x{drawn.image.height} px")


@app.command("list")
def list_benchmarks(as_json: JsonOpt = False) -> None:
    """The benchmarks seganswer eval takes.

    With their splits and headline metric.

    Example:

    \b
        seganswer eval list
        seganswer eval list --json
    """
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
    if counts.get("failed"):
        rows.append(("failed samples", str(counts["failed"])))
    judge = summary.get("judge")
    if judge:
        rows.append(("judge", f"{judge['model'] or Path(judge['target']).name} ({judge['use']}): {judge['judged']} "
                              f"judged ({judge['cached']} cached), {judge['judge_failed']} failed"))
    return rows


def _summary_table(summary: dict[str, Any]) -> Table:
    settings = summary.get("settings", {})
    loop = f" · roi {settings['roi']}" if settings.get("roi") else ""
    loop += " · ground-truth masks" if settings.get("masks") == "gt" else ""
    loop += " · forced opening" if settings.get("opening") == "forced" else ""
    table = Table("metric", "value", title=f"{summary['benchmark']} · {summary['split']} · "
                  f"{Path(settings.get('model', '?')).name}{loop}", title_justify="left")
    for i, (label, value) in enumerate(_rows(summary)):
        table.add_row(f"[bold]{label}[/]" if i == 0 else label, f"[bold]{value}[/]" if i == 0 else value)
    return table


def _report_rows(summaries: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the report: one column per run, one row per setting, metric, cost and count."""
    header = ["", *[s["run"] for s in summaries]]
    columns = [dict(_rows(s)) for s in summaries]
    rows = [[label, *[str(s.get(key)) for s in summaries]] for label, key in (("benchmark", "benchmark"),
                                                                              ("split", "split"))]
    rows += [[label, *[_fmt(s.get("settings", {}).get(label)) for s in summaries]]
             for label in ("model", "roi", "masks", "max_new_tokens")]
    if any(s.get("settings", {}).get("opening") for s in summaries):
        rows.append(["opening", *[s.get("settings", {}).get("opening") or "model" for s in summaries]])
    labels: list[str] = []
    for column in columns:
        labels += [label for label in column if label not in labels]
    rows += [[label, *[column.get(label, "-") for column in columns]] for label in labels]
    if any("paired_with_first" in s for s in summaries):
        rows.append(["vs first run: only this right / only first right (p)",
                     *[_paired_text(s.get("paired_with_first")) for s in summaries]])
    return header, rows


def _paired_with_first(summaries: list[dict[str, Any]]) -> list:
    """``PairedComparison`` of each question run with the first (None for the first run, and for all
    when the runs are not question runs of one benchmark and split)."""
    from seganswer_cli.eval.metrics import paired_comparison
    from seganswer_cli.eval.runner import PREDICTIONS, read_predictions

    if len(summaries) < 2 or any(s.get("task") != "qa" for s in summaries) or len(
            {(s.get("benchmark"), s.get("split")) for s in summaries}) > 1:
        return [None] * len(summaries)
    right = [{k: bool(r["correct"]) for k, r in read_predictions(Path(s["run"]) / PREDICTIONS, repair=False).items()}
             for s in summaries]
    return [None, *[paired_comparison(r, right[0]) for r in right[1:]]]


def _paired_text(paired: dict[str, Any] | None) -> str:
    if paired is None:
        return "-"
    return f"{paired['only_a']} / {paired['only_b']} of {paired['shared']} (p {paired['p_value']:.2g})"


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table (``|`` in cells escaped).

    >>> print(_markdown_table(["", "run"], [["accuracy", "0.5 [0.1, 0.9]"]]))
    |  | run |
    |---|---|
    | accuracy | 0.5 [0.1, 0.9] |
    """
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *[line(row) for row in rows]])
