"""``seganswer data ...``: synthesize the shapes world, inspect datasets.

Thin: parse, validate, print the resolved settings, call ``seganswer_cli.data``. Library code
(numpy, PIL, pycocotools) is imported inside the commands so ``seganswer --help`` stays fast.
"""

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from seganswer_cli.cli.options import JsonOpt, OutDirOpt, SeedOpt, image_output
from seganswer_cli.errors import UsageError

app = typer.Typer(help="""The shapes world and readers for published datasets.

    Example:

    \b
        seganswer data synth --kind vqa --n 200 --out data/shapes-vqa
        seganswer data inspect data/shapes-vqa --examples 3
    """, no_args_is_help=True)

console = Console()
err_console = Console(stderr=True)


class SynthKind(str, Enum):
    refseg = "refseg"
    vqa = "vqa"
    rl = "rl"
    qseg = "qseg"


class OnErrorChoice(str, Enum):
    stop = "stop"
    skip = "skip"


#: The named worlds of ``data/shapes_scenes.py`` (``WORLDS``; spelled here so that --help need not
#: import numpy; tests/test_cli_help.py checks they agree).
World = Literal["default", "demo", "closeup", "wide", "vstar-like"]


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)`` (width, height)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise UsageError(f"--size must look like WIDTHxHEIGHT (e.g. 256x256), got {text!r}")
    return int(width), int(height)


@app.command()
def synth(
    out: OutDirOpt,
    kind: Annotated[SynthKind, typer.Option("--kind", help="refseg (expression + mask), vqa (V*-style questions), "
                                            "rl (verifiable prompts) or qseg (a question + the mask of the "
                                            "region answering it, ReasonSeg-style).")] = SynthKind.refseg,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of samples (one scene each).")] = 100,
    size: Annotated[str | None, typer.Option("--size", help="Canvas WIDTHxHEIGHT in pixels (default: the "
                                             "world's; 256x256 for the default world).")] = None,
    world: Annotated[World, typer.Option("--world", help="Named settings: default, demo (the shipped model's "
                                         "world, docs/shapes-experiment.md), wide (its vocabulary on any canvas, "
                                         "background and prompt format), closeup or vstar-like; options below "
                                         "override.")] = "default",
    seed: SeedOpt = 0,
    min_objects: Annotated[int | None, typer.Option(help="Fewest shapes per scene.")] = None,
    max_objects: Annotated[int | None, typer.Option(help="Most shapes per scene.")] = None,
    min_size: Annotated[int | None, typer.Option(help="Smallest shape side (px).")] = None,
    max_size: Annotated[int | None, typer.Option(help="Largest shape side (px).")] = None,
    clutter: Annotated[int | None, typer.Option(help="Grey specks under the shapes.")] = None,
    layout: Annotated[Literal["seganswer", "vstar", "pope"], typer.Option("--layout", help="seganswer (a dataset folder any command reads), vstar "
                                        "(--kind vqa only: the multiple-choice questions in V* Bench's published "
                                        "layout, for seganswer eval vstar) or pope (--kind vqa only: yes/no "
                                        "questions in POPE's three settings, for seganswer eval pope).")] = "seganswer",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Write into a non-empty --out.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Generate a shapes-world dataset folder.

    Images and records.jsonl, masks as COCO RLE.

    Example:

    \b
        seganswer data synth --kind refseg --n 500 --out data/shapes-refseg
        seganswer data synth --kind vqa --world demo --n 200 --seed 7 --out data/shapes-vqa
        seganswer data synth --kind vqa --layout vstar --n 100 --out data/vstar-shapes
        seganswer data synth --kind vqa --world wide --layout pope --n 100 --out data/pope-shapes
    """
    from dataclasses import asdict

    from seganswer_cli.data.shapes_datasets import write_pope_layout, write_synthetic, write_vstar_layout
    from seganswer_cli.data.shapes_scenes import world as named_world

    if layout != "seganswer" and kind.value != "vqa":
        raise UsageError(f"--layout {layout} writes benchmark questions: use it with --kind vqa, not {kind.value}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; pass --overwrite to write into it")
    overrides = {k: v for k, v in dict(min_objects=min_objects, max_objects=max_objects, min_size=min_size,
                                       max_size=max_size, clutter=clutter).items() if v is not None}
    if size is not None or world == "default":
        overrides["width"], overrides["height"] = parse_size(size or "256x256")
        overrides["canvas_sides"] = None  # one canvas size for every scene
    if world == "default" and "max_size" not in overrides:  # keep the default shape sizes inside small canvases
        overrides["max_size"] = min(64, overrides["width"], overrides["height"])
        overrides.setdefault("min_size", min(16, overrides["max_size"]))
    config = named_world(world, **overrides)
    if not json_out:
        err_console.print(f"[bold]data synth[/] kind={kind.value} world={world} n={n} size={config.canvas_text} "
                          f"seed={seed} -> {out}")
        err_console.print(f"  shapes world: {asdict(config)}", highlight=False)
    if layout == "vstar":
        write_vstar_layout(out, n, config, seed=seed)
    elif layout == "pope":
        write_pope_layout(out, n, config, seed=seed)
    else:
        write_synthetic(out, kind.value, n, config, seed=seed)
    if json_out:
        print(json.dumps({"out": str(out), "kind": kind.value, "layout": layout, "count": n, "seed": seed,
                          "config": asdict(config)}))
    else:
        console.print(f"wrote {n} {kind.value} samples to {out}")


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Dataset folder or file, as distributed.",
                                         show_default=False)],
    format: Annotated[str | None, typer.Option("--format", "-f", help="Format name (detected when omitted): "
                                               "seganswer, refcoco, refcoco+, refcocog, refclef, refcoco-parquet, "
                                               "reasonseg, ade20k, coco, visualcot, virl39k, ...")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Where the images are, when not where the "
                                                "format expects them.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Only this published split (train, val, ...).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Read at most this many samples.")] = None,
    examples: Annotated[int, typer.Option("--examples", min=0, help="Samples to show.")] = 5,
    check: Annotated[bool, typer.Option("--check", help="Decode every image and mask (slow; finds bad images).")]
    = False,
    contact_sheet: Annotated[Path | None, typer.Option("--contact-sheet", callback=image_output, help="Write an "
                                                       "image (.png, .jpg, ...): a grid of the shown samples with "
                                                       "masks drawn.")] = None,
    on_error: Annotated[OnErrorChoice, typer.Option("--on-error", help="stop at the first bad record, or skip "
                                                    "bad records and report them at the end.")] = OnErrorChoice.stop,
    json_out: JsonOpt = False,
) -> None:
    """Count, describe and show samples of a dataset.

    Any supported format (--format, detected when omitted).

    Example:

    \b
        seganswer data inspect data/shapes-vqa
        seganswer data inspect refcoco --format refcoco --split val --limit 100 --contact-sheet refcoco.png
        seganswer data inspect reasonseg/train --check --on-error skip --json
    """
    from seganswer_cli.data.formats import open_dataset
    from seganswer_cli.data.inspect import contact_sheet as write_sheet
    from seganswer_cli.data.inspect import summarize

    dataset = open_dataset(path, format, images=images, split=split, on_error=on_error.value)
    if not json_out:
        err_console.print(f"[bold]data inspect[/] {path} format={dataset.format} on_error={on_error.value}"
                          + (f" split={split}" if split else "") + (f" limit={limit}" if limit else ""))
    summary, shown = summarize(dataset, limit=limit, examples=max(examples, 1 if contact_sheet else 0), check=check)
    if contact_sheet is not None:
        summary["contact_sheet"] = str(write_sheet(shown, contact_sheet))
    if json_out:
        print(json.dumps(summary, ensure_ascii=False))
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    head = Table(show_header=False, box=None)
    head.add_row("path", summary["path"])
    head.add_row("format", summary["format"])
    head.add_row("samples", f"{summary['count']}" + (" (limit reached)" if summary["limited"] else ""))
    for key in ("kinds", "sources", "splits"):
        head.add_row(key, ", ".join(f"{k}: {v}" for k, v in summary[key].items()) or "-")
    head.add_row("fields", ", ".join(summary["fields"]))
    head.add_row("skipped", str(summary["skipped"]))
    if "contact_sheet" in summary:
        head.add_row("contact sheet", summary["contact_sheet"])
    console.print(head)
    if summary["examples"]:
        table = Table(title="examples")
        for column in ("id", "text", "target", "image"):
            table.add_column(column, overflow="fold")
        for ex in summary["examples"]:
            if "expression" in ex:
                text, target = ex["expression"], f"mask {ex['mask_area']} px"
            else:
                options = " ".join(f"({chr(65 + i)}) {o}" for i, o in enumerate(ex["options"]))
                text = ex["question"] + (f"  {options}" if options else "")
                target = ex["answer"] + (f" [{ex['answer_letter']}]" if ex["answer_letter"] else "")
            table.add_row(ex["id"], text, target, ex["image"])
        console.print(table)
    if summary["skipped"]:
        err_console.print(f"[yellow]{summary['skipped']} record(s) skipped:[/]")
        for s in summary["skipped_records"][:10]:
            err_console.print(f"  {s['file']}: record {s['record']}: {s['reason']}", highlight=False)
