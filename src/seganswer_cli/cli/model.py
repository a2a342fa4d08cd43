"""``seganswer model ...``: build model folders from presets and describe them."""

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from seganswer_cli.cli.options import DtypeOpt, JsonOpt, folder_output, resolve_dtype
from seganswer_cli.errors import UsageError

app = typer.Typer(help="""Model folders: create, describe, convert SAM 2.1.

    Example:

    \b
        seganswer model init tiny --out models/tiny
        seganswer model info shapes
    """, no_args_is_help=True)
console = Console()

def describe(model) -> dict:
    """Facts about a loaded model, for ``model info`` and for run folders."""

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    sam = model.mask_decoder.sam
    ip = model.image_processor
    return {
        "preset": model.info.get("preset"),
        "mllm_source": model.info.get("mllm_source"),
        "sam_source": model.info.get("sam_source"),
        "parameters": {
            "mllm_language": count(model.mllm.model.language_model) + count(model.mllm.lm_head),
            "mllm_vision": count(model.mllm.model.visual),
            "projector": count(model.projector),
            "sam_image_encoder": count(sam.vision_encoder),
            "sam_prompt_and_mask_decoder": count(sam) - count(sam.vision_encoder),
        },
        "mllm_architecture": model.mllm.config.model_type,
        "hidden_size": model.mllm.config.text_config.hidden_size,
        # The embedding may have more rows than the tokenizer has tokens (Qwen2.5-VL-7B: 152064 rows,
        # 151666 tokens with <|seg|>): the spare rows are padding, never chosen by the loop.
        "tokenizer_length": len(model.tokenizer),
        "embedding_rows": model.mllm.get_input_embeddings().weight.shape[0],
        "lm_head_rows": model.mllm.get_output_embeddings().weight.shape[0],
        "seg_token_id": model.token_ids.seg,
        "mllm_pixels": {"min": ip.size["shortest_edge"], "max": ip.size["longest_edge"]},
        "sam_image_size": model.mask_decoder.image_size,
        "view": model.info.get("view"),
        "training": model.info.get("training"),
    }


@app.command("init")
def init(
    preset: Annotated[str, typer.Argument(metavar="PRESET", help="Preset name: tiny, shapes-base, qwen2.5-vl-7b, "
                                          "qwen2.5-vl-7b-zoom, qwen3-vl-8b, tiny-qwen3-vl, shapes-base-qwen3-vl "
                                          "(shapes: a copy of the shipped demo model).",
                                          show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", callback=folder_output, help="Folder to write (must not exist "
                                      "or be empty).", show_default=False)],
    mllm: Annotated[str | None, typer.Option(help="Local folder (or hub id) of the MLLM instead of "
                                             "the preset's (Qwen2.5-VL or Qwen3-VL, as the preset).")] = None,
    sam: Annotated[str | None, typer.Option(help="SAM 2.1 instead of the preset's: a transformers folder, a hub id, or Meta's checkpoint file (sam2.1_hiera_large.pt, converted on load).")] = None,
    dtype: DtypeOpt = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the new projector (and of tiny models).")] = 0,
) -> None:
    """Write a fresh model folder from a preset.

    A new projector; the MLLM and SAM 2.1 as published.

    Example:

    \b
        seganswer model init tiny --out models/tiny
        seganswer model init qwen2.5-vl-7b --out models/base-7b --dtype bfloat16
        seganswer model init qwen2.5-vl-7b --out models/base-7b --mllm ~/Qwen2.5-VL-7B-Instruct --sam ~/sam2.1_hiera_large.pt
    """
    from seganswer_cli.model.presets import get_preset

    get_preset(preset)  # unknown names fail before any heavy import
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; choose a new folder")
    torch_dtype = resolve_dtype(dtype)
    from seganswer_cli.model import SegAnswerModel

    console.print(f"building preset [bold]{preset}[/] -> {out}", highlight=False)
    model = SegAnswerModel.from_preset(preset, mllm_path=mllm, sam_path=sam, dtype=torch_dtype, seed=seed)
    model.save_pretrained(out, extra_info={"created_by": f"seganswer model init {preset}", "seed": seed})
    console.print(f"[green]wrote[/] {out}", highlight=False)


@app.command("info")
def info(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A seganswer model folder or a preset name (shapes: "
                                         "the shipped demo model).", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Describe a model folder or preset.

    Where its parts come from, parameter counts, pixel budgets, view settings.

    Example:

    \b
        seganswer model info shapes
        seganswer model info runs/stage2/model --json
    """
    from seganswer_cli.model import SegAnswerModel

    loaded = SegAnswerModel.from_pretrained(model)
    facts = describe(loaded)
    if as_json:
        print(json.dumps(facts))
        return
    table = Table(title=f"seganswer model: {model}", show_header=False)
    for key, value in facts.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:,}" if type(v) is int else f"{k}={v}" for k, v in value.items())
        table.add_row(key, str(value))
    console.print(table)


@app.command("convert-sam")
def convert_sam(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="Meta's SAM 2.1 checkpoint file, e.g. "
                                               "sam2.1_hiera_large.pt.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", callback=folder_output, help="Folder to write (must not exist "
                                      "or be empty).", show_default=False)],
    config: Annotated[Path | None, typer.Option(help="Its yaml, e.g. sam2.1_hiera_l.yaml (default: a yaml beside the checkpoint, else the published architecture its file name names).")] = None,
) -> None:
    """Convert Meta's SAM 2.1 checkpoint into a folder for --sam.

    The checkpoint (+ its yaml) becomes a transformers Sam2Model folder.

    Example:

    \b
        seganswer model convert-sam sam2.1_hiera_large.pt --out sam2.1-large
        seganswer model init qwen2.5-vl-7b --out models/base-7b --sam sam2.1-large
    """
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; choose a new folder")
    from seganswer_cli.model.sam_checkpoint import convert_checkpoint

    console.print(f"converting {checkpoint}" + (f" with {config}" if config else "") + f" -> {out}", highlight=False)
    convert_checkpoint(checkpoint, out, config)
    console.print(f"[green]wrote[/] {out} (load it with --sam {out})", highlight=False)
