"""``seganswer infer`` (segment, look again, answer) and ``seganswer segment`` (Stage 1 masks)."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from seganswer_cli.cli.options import (
    DEFAULT_MODEL,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelDefaultOpt,
    OpeningOpt,
    QuietOpt,
    RoiOpt,
    image_output,
    jsonl_output,
    load_model,
    mask_output,
    note_generation_config,
    refuse_overwriting,
)
from seganswer_cli.errors import DataError, NoAnswer, UsageError

console = Console()
err_console = Console(stderr=True)


def infer(
    image: Annotated[Path | None, typer.Argument(metavar="IMAGE", help="Image file (omit with --batch).",
                                                 show_default=False)] = None,
    question: Annotated[str | None, typer.Argument(metavar="QUESTION", help="The question (omit with --batch).",
                                                   show_default=False)] = None,
    model: ModelDefaultOpt = DEFAULT_MODEL,
    roi: RoiOpt = "mask",
    opening: OpeningOpt = "model",
    max_seg_steps: Annotated[int, typer.Option(min=0, help="Most <|seg|> rounds per question.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most generated tokens per question; an answer "
                                                "cut off by this limit is no answer (exit 3).")] = 256,
    sample: Annotated[bool, typer.Option("--sample", help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (with --sample).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with --sample).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    save_vis: Annotated[Path | None, typer.Option(callback=image_output, help="Write a figure (.png, .jpg, ...): "
                                                  "the mask on the image beside the segmented view. Written "
                                                  "after the answer is printed.")] = None,
    as_json: JsonOpt = False,
    batch: Annotated[Path | None, typer.Option(help="JSONL of questions: {\"id\", \"image\", \"question\"} "
                                               "per line.")] = None,
    out: Annotated[Path | None, typer.Option(callback=jsonl_output, help="With --batch: the answers (.jsonl), "
                                             "appended as they come; rerun resumes.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="With --batch: questions answered together.")] = 4,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Answer a question about an image: segment, look, answer.

    The model segments the region of interest, looks at it again, then answers.

    Exit status: 0 with an answer; 3 when the model gave none (it stopped without one, or the token
    limit cut it off: the partial text is shown as partial); 2 for usage errors; 1 for other failures.

    Example:

    \b
        seganswer infer examples/shapes-4.png "What shape is the smallest yellow shape?"
        seganswer infer photo.jpg "What is written on the sign?" --model my-model --save-vis fig.png
        seganswer infer photo.jpg "Is there a dog?" --roi bbox --json
        seganswer infer --batch examples/questions.jsonl --out answers.jsonl
    """
    from seganswer_cli.reasoning import ReasoningSettings

    refuse_overwriting(save_vis, image, "--save-vis", "input image")
    refuse_overwriting(out, batch, "--out", "batch file")
    settings = ReasoningSettings(roi=roi, max_seg_steps=max_seg_steps, max_new_tokens=max_new_tokens,
                                 sample=sample, temperature=temperature, top_p=top_p, seed=seed, opening=opening)
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
    from seganswer_cli.reasoning import run, trajectory_record, world_warning

    pil = load_image(image)  # bad images fail before the model loads
    if not as_json and not quiet:
        err_console.print(f"model [bold]{model}[/] · roi {roi} · {'sampled' if sample else 'greedy'}", highlight=False)
    loaded = load_model(model, device, dtype)
    if not as_json and not quiet:
        note_generation_config(loaded, err_console)
    traj = run(loaded, pil, question, settings)
    warning = world_warning(loaded, pil, question)
    cut_off = traj.stop_reason == "length"  # a cut-off answer is no answer: shown as partial, exit 3
    # The result first, then the figure: a figure that cannot be written never loses the answer.
    if as_json:
        record = trajectory_record(traj, image=str(image), model=model, roi=roi)
        if cut_off:
            record.update(answer=None, partial_answer=traj.answer, answer_reason="token_limit")
        if warning:
            record["warning"] = warning
        print(json.dumps(record))
    else:
        _print_trajectory(traj, save_vis, cut_off=cut_off)
        if warning and not quiet:
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    sys.stdout.flush()
    if save_vis is not None:
        from seganswer_cli.viz import save_image, trajectory_figure

        save_image(trajectory_figure(pil, traj), save_vis)
    if cut_off:
        partial = f"; partial text: {traj.answer!r}" if traj.answer else ""
        raise NoAnswer(f"no answer: the token limit (--max-new-tokens {max_new_tokens}) stopped the model "
                       f"before it finished{partial}")
    if traj.answer is None:
        from seganswer_cli.model.conversation import NO_ANSWER_REASONS

        why = NO_ANSWER_REASONS.get(traj.answer_reason or "", "none was given")
        raise NoAnswer(f"no answer: the model stopped ({traj.stop_reason}) without one: {why}")


def _print_trajectory(traj, save_vis: Path | None, *, cut_off: bool = False) -> None:
    for i, turn in enumerate(traj.turns):
        console.print(Panel(escape(turn.strip()) or "(empty)", title=f"model turn {i + 1}", title_align="left"), highlight=False)
        if i < len(traj.steps):
            step = traj.steps[i]
            area = int(step.mask.sum()) if step.mask is not None else 0
            note = f" · fallback: {step.fallback}" if step.fallback else ""
            console.print(f"  [cyan]<|seg|>[/] mask {area} px · crop {step.box} · second look "
                          f"{step.kept_tokens} visual tokens{note}", highlight=False)
    table = Table(show_header=False, box=None)
    if cut_off:
        table.add_row("answer", "[red](none: cut off by the token limit)[/]")
        if traj.answer is not None:
            table.add_row("partial", escape(traj.answer))
    else:
        table.add_row("answer", f"[bold]{escape(traj.answer)}[/]" if traj.answer is not None else "[red](none)[/]")
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
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="Image file.", show_default=False)],
    expression: Annotated[str, typer.Argument(metavar="EXPRESSION", help="What to segment, e.g. \"the red triangle\".",
                                              show_default=False)],
    model: ModelDefaultOpt = DEFAULT_MODEL,
    save_vis: Annotated[Path | None, typer.Option(callback=image_output, help="Write a figure of the mask over the "
                                                  "image (.png, .jpg, ...).")] = None,
    save_mask: Annotated[Path | None, typer.Option(callback=mask_output, help="Write the mask as a black/white "
                                                   "image (lossless: .png, .bmp, .tif).")] = None,
    as_json: JsonOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Referring segmentation: the mask EXPRESSION names.

    The task of Stage 1, asked with the paper's Prompt 1 (Segment the "..." in the image.); the model
    replies It is <|seg|>. and SAM 2.1 decodes the mask from the state of <|seg|>.

    Example:

    \b
        seganswer segment examples/shapes-1.png "the yellow triangle" --save-mask mask.png
        seganswer segment photo.jpg "the dog on the left" --save-vis fig.png --json
    """
    from PIL import Image

    from seganswer_cli.images import load_image
    from seganswer_cli.masks import encode_rle, mask_bbox
    from seganswer_cli.viz import save_image, segmentation_figure

    refuse_overwriting(save_vis, image, "--save-vis", "input image")
    refuse_overwriting(save_mask, image, "--save-mask", "input image")
    refuse_overwriting(save_mask, save_vis, "--save-mask", "--save-vis file")
    if not expression.strip():
        raise UsageError("the expression is empty")
    pil = load_image(image)
    loaded = load_model(model, device, dtype)
    mask, iou, score = loaded.segment(pil, expression)
    area = int(mask.sum())
    bbox = list(mask_bbox(mask)) if area else None  # COCO: x, y, width, height
    # The result first, then the files: one that cannot be written never loses the mask.
    if as_json:
        print(json.dumps({"image": str(image), "expression": expression, "mask": encode_rle(mask), "area": area,
                          "bbox": bbox, "iou": round(iou, 4), "object_score": round(score, 4)}))
    else:
        console.print(f"mask: {area} px ({area / mask.size:.2%} of the image) · bbox (x, y, w, h) {bbox} · "
                      f"predicted IoU {iou:.3f} · object score {score:.3f}", highlight=False)
    sys.stdout.flush()
    if save_mask is not None:
        save_image(Image.fromarray(mask.astype("uint8") * 255), save_mask)
    if save_vis is not None:
        save_image(segmentation_figure(pil, mask, expression), save_vis)
    if not as_json:
        for path in (save_mask, save_vis):
            if path is not None:
                console.print(f"wrote {path}", highlight=False)
