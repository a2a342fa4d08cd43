"""``seganswer plan``: per-GPU memory of a training recipe before launch, for DDP and FSDP.

Thin: the recipe is read the way the training commands read ``-c`` (YAML over the stage's defaults,
``--set`` over it), the cheap checks run before torch loads, then ``train.memory_plan`` builds the
model on the meta device, runs the stage's own freezing on it and does the arithmetic.
"""

import json
from typing import Annotated, Literal

import typer

from seganswer_cli.cli.options import JsonOpt
from seganswer_cli.cli.train import Strategy

Opt = typer.Option
#: ``train/memory_plan.py``'s ``STAGES`` (tests/test_cli_help.py checks they agree).
Stage = Literal["stage1", "stage2", "stage3"]


def plan(
    config: Annotated[str, Opt("--config", "-c", metavar="YAML|NAME", show_default=False,
                               help="Recipe: a YAML file or a shipped name (stage1-7b, stage2-7b, stage3-7b, "
                               "stage2-qwen3-vl-8b, ...).")],
    model: Annotated[str | None, Opt("--model", "-m", help="Preset or model folder whose architecture to plan "
                                     "(default: the recipe's model, when it is a preset or an existing folder).")] = None,
    stage: Annotated[Stage | None, Opt("--stage", help="The recipe's stage (default: from its name).")] = None,
    set_: Annotated[list[str] | None, Opt("--set", metavar="KEY=VALUE", help="Any setting of the stage's config "
                                          "(phase=lora, max_length=4096); repeat.")] = None,
    gpus: Annotated[int, Opt("--gpus", help="GPUs (processes) the run is launched on.")] = 8,
    gpu_memory: Annotated[str, Opt("--gpu-memory", help="Memory of one GPU: 80GB, 80GiB, 80G or 80 (GiB).")] = "80GB",
    strategy: Annotated[Strategy | None, Opt("--strategy", help="ddp or fsdp: the one the verdict is about "
                                        "(default: the recipe's, else ddp). Both are shown.")] = None,
    offload: Annotated[bool | None, Opt("--offload/--no-offload", show_default=False,
                                        help="FSDP with its shards in CPU memory (default: the recipe's).")] = None,
    micro_batch: Annotated[int | None, Opt("--micro-batch", help="Sequences per forward (default: the recipe's "
                                           "batch_size; Stage 3: micro_batch_size).")] = None,
    checkpointing: Annotated[bool | None, Opt("--checkpointing/--no-checkpointing", show_default=False,
                                              help="Activation checkpointing (default: the recipe's).")] = None,
    image_tokens: Annotated[int, Opt("--image-tokens", help="LLM tokens per image (one per 28x28 px on Qwen2.5-VL, "
                                     "32x32 px on Qwen3-VL).")] = 1024,
    as_json: JsonOpt = False,
) -> None:
    """Per-GPU memory of a training recipe: does it fit?

    Weights, gradients, AdamW and activations, for DDP and FSDP.

    Exit status 1 when the chosen strategy does not fit.

    Example:

    \b
        seganswer plan -c stage2-7b --gpus 8 --gpu-memory 80GB
        seganswer plan -c stage3-7b --strategy fsdp --offload --gpus 4 --json
        seganswer plan -c my-recipe.yaml --stage stage1 --model qwen2.5-vl-7b --set phase=lora
        seganswer plan -c stage2-qwen3-vl-8b -m qwen3-vl-8b
    """
    from seganswer_cli.config import Stage1Config, Stage2Config, Stage3Config, load_config, read_yaml
    from seganswer_cli.errors import UsageError
    from seganswer_cli.train.memory_plan import STAGES, STRATEGIES, parse_gpu_memory, stage_of

    memory = parse_gpu_memory(gpu_memory)
    if gpus < 1:
        raise UsageError(f"--gpus must be >= 1, got {gpus}")
    read_yaml(config)  # a recipe that is not there: said before anything else
    stage = stage or stage_of(config)
    if stage not in STAGES:
        raise UsageError(f"say which stage {config} is for: --stage {'|'.join(STAGES)}")
    cls = {"stage1": Stage1Config, "stage2": Stage2Config, "stage3": Stage3Config}[stage]
    cfg = load_config(cls, config, assignments=set_).resolved()
    strategy = strategy or getattr(cfg, "strategy", "ddp")
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy {strategy!r}: expected ddp or fsdp")
    offload = getattr(cfg, "cpu_offload", False) if offload is None else offload
    spec = model or _recipe_model(cfg.model, config)

    from seganswer_cli.train.memory_plan import plan_recipe

    result = plan_recipe(cfg, stage, model=spec, gpus=gpus, gpu_memory=memory, strategy=strategy, offload=offload,
                         micro_batch=micro_batch, checkpointing=checkpointing, image_tokens=image_tokens,
                         recipe=config)
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        _show(result)
    if not result.chosen.fits:
        raise typer.Exit(1)


def _recipe_model(name: str | None, recipe: str) -> str:
    from pathlib import Path

    from seganswer_cli.errors import UsageError
    from seganswer_cli.model.presets import PRESETS

    if name and (name in PRESETS or Path(name).is_dir()):
        return name
    raise UsageError(f"{recipe} starts from {name or 'a model folder it does not name'}, which is not here: give "
                     f"--model with a model folder or the preset of its architecture ({', '.join(PRESETS)})")


def _show(result) -> None:
    from rich.console import Console
    from rich.table import Table

    from seganswer_cli.train.memory_plan import gib

    console = Console()
    w = result.workload
    parts = Table(title=f"seganswer plan {result.recipe} ({result.stage}, {result.model})")
    for column in ("part", "parameters", "trainable", "stored as"):
        parts.add_column(column, justify="left" if column in ("part", "stored as") else "right")
    for p in result.census.parts:
        parts.add_row(p.name, f"{p.params:,}", f"{p.trainable:,}", ", ".join(p.dtypes))
    parts.add_row("all", f"{result.census.params:,}", f"{result.census.trainable:,}", "")
    console.print(parts)
    ddp, fsdp = result.strategies["ddp"], result.strategies["fsdp"]
    table = Table(title=f"GiB per GPU ({result.gpus} x {gib(result.gpu_memory):g} GiB)",
                  caption=f"micro-batch {w.micro_batch} x {w.tokens} tokens, checkpointing "
                          f"{'on' if w.checkpointing else 'off'}")
    table.add_column("")
    table.add_column("DDP", justify="right")
    table.add_column("FSDP" + (" + offload" if result.offload else ""), justify="right")
    for term in dict.fromkeys([*ddp.terms, *fsdp.terms]):
        if not ddp.terms.get(term) and not fsdp.terms.get(term):
            continue  # e.g. no reference model, no rollouts outside Stage 3
        table.add_row(term, f"{gib(ddp.terms.get(term, 0)):.2f}", f"{gib(fsdp.terms.get(term, 0)):.2f}")
    table.add_row("total", f"{gib(ddp.total):.2f}", f"{gib(fsdp.total):.2f}")
    table.add_row("reserve (2 GiB + 10 %)", f"{gib(ddp.reserve):.2f}", f"{gib(fsdp.reserve):.2f}")
    table.add_row("fits", "yes" if ddp.fits else "no", "yes" if fsdp.fits else "no")
    if result.offload:
        table.add_row("CPU memory per GPU", "", f"{gib(fsdp.cpu_per_gpu):.2f}")
    console.print(table)
    for note in w.notes:
        console.print(f"assumed: {note}", highlight=False)
    verdict = "fits" if result.chosen.fits else f"does not fit; {result.suggestion}"
    console.print(f"{result.strategy.upper()} on {result.gpus} GPUs: {verdict}", highlight=False)
