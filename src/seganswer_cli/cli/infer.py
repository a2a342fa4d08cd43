"""``seganswer infer`` (segment, look again, answer) and ``seganswer segment`` (Stage 1 masks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from seganswer_cli.cli.options import (
    DEFAULT_MODEL,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelDefaultOpt,
    QuietOpt,
    load_model,
    note_generation_config,
)
from seganswer_cli.errors import DataError, NoAnswer, UsageError

console = Console()
err_console = Console(stderr=True)

RoiOpt = Annotated[str, typer.Option("--roi", help="Second look: mask (sparse segmented patches), bbox (box crop), none (answer directly from the first look).")]


def infer(
    image: Annotated[Path | None, typer.Argument(help="Image file (omit with --batch).", show_default=False)] = None,
    question: Annotated[str | None, typer.Argument(help="The question (omit with --batch).", show_default=False)] = None,
    model: ModelDefaultOpt = DEFAULT_MODEL,
    roi: RoiOpt = "mask",
    max_seg_steps: Annotated[int, typer.Option(help="Most <|seg|> rounds per question.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Most generated tokens per question.")] = 256,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (with --sample).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with --sample).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    save_vis: Annotated[Path | None, typer.Option(help="Write a PNG: mask on the image beside the segmented view.")] = None,
    as_json: JsonOpt = False,
    batch: Annotated[Path | None, typer.Option(help="JSONL of questions: {\"id\", \"image\", \"question\"} per line.")] = None,
    out: Annotated[Path | None, typer.Option(help="With --batch: JSONL answers, appended as they come; rerun resumes.")] = None,
    batch_size: Annotated[int, typer.Option(help="With --batch: questions answered together.")] = 4,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Answer a question about an image: segment the region of interest, look again, answer."""
    from seganswer_cli.reasoning import ReasoningSettings

    settings = ReasoningSettings(roi=roi, max_seg_steps=max_seg_steps, max_new_tokens=max_new_tokens,
                                 sample=sample, temperature=temperature, top_p=top_p, seed=seed)
    if batch is not None:
        if image is not None or question is not None:
            raise UsageError("give either IMAGE QUESTION or --batch FILE, not both")
        if out is None:
            raise UsageError("--batch needs --out ANSWERS.jsonl")
        return _infer_batch(batch, out, model, settings, batch_size, device, dtype, quiet)
    if image is None or question is None:
        raise UsageError("give an IMAGE and a QUESTION (or --batch FILE --out FILE)")
    if not question.strip():
        raise UsageError("the question is empty")
    from seganswer_cli.images import load_image
    from seganswer_cli.reasoning import run, trajectory_record

    pil = load_image(image)  # bad images fail before the model loads
    if not as_json and not quiet:
        err_console.print(f"model [bold]{model}[/] · roi {roi} · {'sampled' if sample else 'greedy'}", highlight=False)
    loaded = load_model(model, device, dtype)
    if not as_json and not quiet:
        note_generation_config(loaded, err_console)
    traj = run(loaded, pil, question, settings)
    if save_vis is not None:
        from seganswer_cli.viz import trajectory_figure

        save_vis.parent.mkdir(parents=True, exist_ok=True)
        trajectory_figure(pil, traj).save(save_vis)
    if as_json:
        print(json.dumps(trajectory_record(traj, image=str(image), model=model, roi=roi)))
    else:
        _print_trajectory(traj, save_vis)
    if traj.answer is None:
        from seganswer_cli.model.conversation import NO_ANSWER_REASONS

        why = NO_ANSWER_REASONS.get(traj.answer_reason or "", "none was given")
        raise NoAnswer(f"no answer: the model stopped ({traj.stop_reason}) without one: {why}")


def _print_trajectory(traj, save_vis: Path | None) -> None:
    for i, turn in enumerate(traj.turns):
        console.print(Panel(turn.strip() or "(empty)", title=f"model turn {i + 1}", title_align="left"), highlight=False)
        if i < len(traj.steps):
            step = traj.steps[i]
            area = int(step.mask.sum()) if step.mask is not None else 0
            note = f" · fallback: {step.fallback}" if step.fallback else ""
            console.print(f"  [cyan]<|seg|>[/] mask {area} px · crop {step.box} · second look "
                          f"{step.kept_tokens} visual tokens{note}", highlight=False)
    table = Table(show_header=False, box=None)
    table.add_row("answer", f"[bold]{traj.answer}[/]" if traj.answer is not None else "[red](none)[/]")
    table.add_row("stopped", f"{traj.stop_reason} · {traj.generated_tokens} tokens generated")
    table.add_row("seconds", " · ".join(f"{k} {v:.3f}" for k, v in traj.timings.items()))
    if save_vis is not None:
        table.add_row("figure", str(save_vis))
    console.print(table)


def _infer_batch(batch: Path, out: Path, model: str, settings, batch_size: int, device: str, dtype: str, quiet: bool) -> None:
    """``--batch``: the library (``seganswer_cli.batch_infer``) answers; this prints what it does."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from seganswer_cli.batch_infer import BatchRun, BatchSettings

    run = BatchRun.open(batch, out, BatchSettings.create(model, dtype, settings), batch_size=batch_size)
    todo = len(run.todo)
    if not quiet:
        err_console.print(f"{len(run.entries)} lines · {len(run.questions) - todo} already answered in {out} · "
                          f"{todo} to do", highlight=False, soft_wrap=True)

    def load():
        loaded = load_model(model, device, dtype)
        if not quiet:
            note_generation_config(loaded, err_console)
        return loaded

    with Progress(TextColumn("answering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, disable=quiet) as progress:
        task = progress.add_task("answering", total=todo + len(run.bad_lines))

        def on_record(record: dict) -> None:
            if "error" in record:
                which = f" (id {record['id']})" if record["id"] is not None else ""
                progress.console.print(f"[red]failed[/] {batch}:{record['line']}{which}: {record['error']}",
                                       highlight=False, soft_wrap=True)
            progress.advance(task)

        counts = run.execute(load, on_record=on_record)
    none = (f" ({counts.unanswered} of this run without an answer: `answer` null, see `answer_reason`)"
            if counts.unanswered else "")
    err_console.print(f"{len(run.done)} answered{none} · {len(counts.failed)} failed · answers in {out}",
                      highlight=False, soft_wrap=True)
    if counts.failed:
        raise DataError(f"{len(counts.failed)} line(s) of {batch} could not be answered (see the lines above; "
                        f"their records in {out} say why, and a rerun tries them again)")


def segment(
    image: Annotated[Path, typer.Argument(help="Image file.")],
    expression: Annotated[str, typer.Argument(help="What to segment, e.g. \"the red triangle\".")],
    model: ModelDefaultOpt = DEFAULT_MODEL,
    save_vis: Annotated[Path | None, typer.Option(help="Write a PNG of the mask over the image.")] = None,
    save_mask: Annotated[Path | None, typer.Option(help="Write the mask as a black/white PNG.")] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Referring segmentation (Stage 1): the paper's Prompt 1 -> ``It is <|seg|>.`` -> the mask."""
    from PIL import Image

    from seganswer_cli.images import load_image
    from seganswer_cli.masks import encode_rle, mask_bbox

    if not expression.strip():
        raise UsageError("the expression is empty")
    pil = load_image(image)
    loaded = load_model(model, device, dtype)
    mask, iou, score = loaded.segment(pil, expression)
    if save_mask is not None:
        save_mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype("uint8") * 255).save(save_mask)
    if save_vis is not None:
        from seganswer_cli.viz import segmentation_figure

        save_vis.parent.mkdir(parents=True, exist_ok=True)
        segmentation_figure(pil, mask, expression).save(save_vis)
    area = int(mask.sum())
    bbox = list(mask_bbox(mask)) if area else None  # COCO: x, y, width, height
    if as_json:
        print(json.dumps({"image": str(image), "expression": expression, "mask": encode_rle(mask), "area": area,
                          "bbox": bbox, "iou": round(iou, 4), "object_score": round(score, 4)}))
    else:
        console.print(f"mask: {area} px ({area / mask.size:.2%} of the image) · bbox (x, y, w, h) {bbox} · "
                      f"predicted IoU {iou:.3f} · object score {score:.3f}", highlight=False)
        for path in (save_mask, save_vis):
            if path is not None:
                console.print(f"wrote {path}", highlight=False)
    sys.stdout.flush()
