"""What every training stage does before its first step and after its last (Stage 1, 2, 3 and the
demo's stand-in), written once: the run folder and the settings it continues with, the data specs,
the accelerator, the starting model and the parts of it that train, the optimizer and its schedule,
the run's ``settings.json``, the start table, and the final model folder with its training record.

A stage file reads top to bottom (setup -> train -> save) and calls these in order::

    run, config = open_run(config, out, resume=..., overwrite=..., stage=STAGE, defaults=Stage2Config())
    accelerator = start_accelerator(config, gradient_accumulation_steps=config.grad_accum)
    model = load_starting_model(config)
    train_the_mllm(model, freeze_vision=config.freeze_vision)       # or the stage's own freezing
    ready_to_train(model, config)                                   # float32 trainables, checkpointing
    model, optimizer, scheduler, warmup = engine.prepare_for_training(  # DDP, or FSDP2 shards (engine.py)
        accelerator, model, config, param_groups=trainable_parameters, total_steps=total_steps)
    settings = run_settings(STAGE, config, accelerator, mixture, model, ...)
    state, log = start_or_resume(run, accelerator, settings, ...)
    print_start("train-stage2", settings, run, start_step, skipped, rows={...})
    ...
    final = engine.full_model(accelerator, model, rebuild)          # FSDP2: gathered on the main process
    save_trained_model(accelerator, run, final, config.dtype,
                       lambda: runs.training_record(model, settings, run, stage=STAGE, step=...), show=show)

What a training step calls (the sample stream, reductions, clipping, the progress bar) is ``steps.py``'s;
what a run folder holds is ``runs.py``'s.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from seganswer_cli import __version__
from seganswer_cli.errors import UsageError
from seganswer_cli.train import runs

# -- the run folder and the data --------------------------------------------------------------------


def open_run(config, out: str | Path, *, resume: bool, overwrite: bool, stage: str, defaults):
    """The run folder (its policy checked, ``runs.check_run_folder``) and the config the run goes on
    with: with ``resume`` the run's own settings (``runs.resumed_config``; a contradicting setting is
    refused), then resolved. Nothing is written."""
    run = runs.check_run_folder(out, resume=resume, overwrite=overwrite)
    if resume:
        config = runs.resumed_config(run, config, stage=stage, defaults=defaults)
    return run, config.resolved()


def data_specs(data: list[str], what: str = "training data") -> list:
    """The ``--data NAME=PATH[:weight]`` specs of a run, every path checked (``UsageError`` naming
    the first that does not exist, or saying that there are none)."""
    from seganswer_cli.data import parse_data_specs

    if not data:
        raise UsageError(f"no {what}: give --data NAME=PATH[:weight] (or `data:` in the config)")
    specs = parse_data_specs(data)
    for spec in specs:
        if not spec.path.exists():
            raise UsageError(f"dataset path not found: {spec.path} (--data {spec.name}={spec.path})")
    return specs


def start_accelerator(config, **kwargs):
    """accelerate's ``Accelerator`` for a run (its ``mixed_precision``; ``kwargs`` as accelerate
    takes them), with python, numpy and torch seeded from ``config.seed``."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        # accelerate starts gloo data parallel on CPU-only machines only when told the CPU is meant
        cpu=not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        mixed_precision=config.mixed_precision,
        **kwargs,
    )
    set_seed(config.seed)  # python, numpy, torch (and CUDA)
    return accelerator


# -- the model and what of it trains ------------------------------------------------------------------


@contextmanager
def quiet_transformers():
    """No transformers progress bars while loading or saving (the run prints its own lines)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def load_starting_model(config):
    """The model a run starts from: ``config.model``, a folder or a preset; a preset with local
    copies of its MLLM and SAM 2.1 when the config has ``mllm_path``/``sam_path`` (Stage 1).
    Every weight is loaded in the run's ``dtype``, whatever the checkpoint stores (a published bf16
    MLLM becomes float32 in a ``dtype: float32`` run); the trainable parts become float32 in
    ``ready_to_train``."""
    from seganswer_cli.model import PRESETS, SegAnswerModel

    dtype = run_dtype(config.dtype)
    mllm_path, sam_path = getattr(config, "mllm_path", None), getattr(config, "sam_path", None)
    with quiet_transformers():
        if mllm_path or sam_path:
            if config.model not in PRESETS:
                raise UsageError("--mllm-path/--sam-path apply to a preset name, not to a model folder")
            return SegAnswerModel.from_preset(config.model, mllm_path=mllm_path, sam_path=sam_path, dtype=dtype)
        return SegAnswerModel.from_pretrained(config.model, dtype=dtype)


def run_dtype(name: str) -> torch.dtype:
    """The torch dtype of a run's ``dtype`` setting (``float32``, ``bfloat16``, ``float16``)."""
    return getattr(torch, name)


def cast_to_run_dtype(model, name: str) -> None:
    """Every weight of ``model`` in the run's ``dtype`` (what trained was kept in float32): what a
    finished stage and ``merge-lora`` write."""
    model.to(run_dtype(name))


def train_the_mllm(model, *, freeze_vision: bool) -> None:
    """Stage 2 and 3: every MLLM parameter trains (the vision tower unless ``freeze_vision``); the
    projector and SAM 2.1 stay frozen."""
    model.requires_grad_(False)
    model.mllm.requires_grad_(True)
    if freeze_vision:
        model.mllm.model.visual.requires_grad_(False)


def float32_trainables(model) -> list[torch.nn.Parameter]:
    """The parameters that train, cast to float32 (AdamW on half-precision weights loses the
    update; a checkpoint's trainable state is saved in float32)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.dtype != torch.float32:
            p.data = p.data.float()
    return params


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    """AdamW's parameters of a run that trains everything not frozen at one rate."""
    return [p for p in model.parameters() if p.requires_grad]


def ready_to_train(model, config) -> list[torch.nn.Parameter]:
    """``float32_trainables``, with activation checkpointing on when ``config.gradient_checkpointing``."""
    params = float32_trainables(model)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model.mllm)
    return params


def enable_activation_checkpointing(mllm) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant: works with frozen
    inputs, LoRA and DDP's unused-parameter search)."""
    kwargs = {"use_reentrant": False}
    if hasattr(mllm, "activation_checkpointing_enable"):  # transformers >= 5.2x name
        mllm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        mllm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def keep_frozen_parts_in_eval(model) -> None:
    """Train mode for what trains; the frozen towers stay in eval mode (no dropout/drop-path noise)."""
    model.mask_decoder.sam.vision_encoder.eval()
    model.mllm.model.visual.eval()


# -- steps, optimizer, schedule -----------------------------------------------------------------------


def planned_steps(config, dataset_size: int, samples_per_step: int) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)`` of a run: ``max_steps`` when set, else ``epochs`` passes over
    ``dataset_size`` samples (or prompts) at ``samples_per_step`` per step (at least 1)."""
    steps_per_epoch = math.ceil(dataset_size / samples_per_step)
    return steps_per_epoch, config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))


def adamw_with_schedule(params, optim, total: int):
    """AdamW on ``params`` (a list of tensors or of groups) with ``optim``'s settings, its
    ``LambdaLR`` over ``total`` optimizer updates, and the warmup updates (``warmup_steps``, else
    ``warmup_ratio`` of ``total``)."""
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas, eps=optim.eps,
                                  weight_decay=optim.weight_decay)
    warmup = optim.warmup_steps if optim.warmup_steps is not None else round(optim.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(optim.schedule, warmup, total,
                                                                         optim.min_lr_ratio))
    return optimizer, scheduler, warmup


def lr_schedule(kind: str, warmup: int, total: int, min_ratio: float):
    """Multiplier of the peak learning rate at optimizer step ``s`` (0-based, as LambdaLR counts).

    >>> f = lr_schedule("cosine", warmup=2, total=10, min_ratio=0.0)
    >>> [round(f(s), 3) for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """

    def multiplier(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        if kind == "constant" or total <= warmup:
            return 1.0
        progress = min(1.0, (s - warmup) / (total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return multiplier


# -- settings.json, resume, the start table -------------------------------------------------------------


def versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    return {"seganswer": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}


def run_settings(stage: str, config, accelerator, mixture, skipped: dict, model, *, steps_per_epoch: int,
                 total_steps: int, warmup_steps: int, **extra: Any) -> dict[str, Any]:
    """What a run folder's ``settings.json`` holds: the stage, the resolved config, the launch
    (processes), the data (sizes per source, records the readers skipped), the plan (steps, warmup),
    the parameter counts and the package versions; ``extra``: the stage's own (``global_batch``, ...)."""
    from seganswer_cli.config import to_dict

    return {
        "stage": stage,
        "config": to_dict(config),
        "processes": accelerator.num_processes,
        **extra,
        "dataset_size": sum(len(s) for s in mixture.sources),
        "sources": {n: len(s) for n, s in zip(mixture.names, mixture.sources)},
        "records_skipped_reading": {n: len(e.skipped) for n, e in skipped.items()},
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "frozen_parameters": sum(p.numel() for p in model.parameters() if not p.requires_grad),
        "versions": versions(),
    }


#: Trainer-state keys a resumed launch must match, and how the error names them.
_LAUNCH_KEYS = {"global_batch": "a global batch of", "processes": "a process count of"}


def start_or_resume(run, accelerator, settings: dict, *, resume: bool, overwrite: bool, model, optimizer,
                    scheduler, launch_key: str) -> tuple[dict, runs.MetricsLog]:
    """Begin a run's training: with ``resume``, load the latest checkpoint into ``model``, ``optimizer``
    and ``scheduler``, refuse a launch whose ``settings[launch_key]`` (``global_batch`` or ``processes``)
    differs from the run's, and drop metrics lines after the checkpoint's step; otherwise write the
    run folder's ``settings.json``. Returns the checkpoint's trainer state (empty for a new run) and
    the metrics log."""
    log = runs.MetricsLog(run.metrics_path)
    state: dict = {}
    if resume:
        state = runs.load_checkpoint(run.latest_checkpoint(), accelerator, model=model, optimizer=optimizer,
                                     scheduler=scheduler)
        if state[launch_key] != settings[launch_key]:
            raise UsageError(f"the run used {_LAUNCH_KEYS[launch_key]} {state[launch_key]}; this launch gives "
                             f"{settings[launch_key]} ({accelerator.num_processes} process(es)); resume with "
                             "the same number of processes")
        if accelerator.is_main_process:
            log.truncate_after(state["step"])
    elif accelerator.is_main_process:
        runs.start_run(run, settings, overwrite=overwrite)
    accelerator.wait_for_everyone()
    return state, log


def print_start(command: str, settings: dict[str, Any], run, start_step: int, skipped: dict,
                rows: dict[str, str]) -> None:
    """The table a run opens with (stderr): the starting model and data, the stage's own ``rows``,
    then steps, learning rate, precision and trainable parameters (a stage's row of the same name
    replaces the common one), and where a resumed run starts; then what the readers skipped."""
    from rich.console import Console
    from rich.table import Table

    c = settings["config"]
    table = {"model": c["model"], "data": ", ".join(c["data"]), **rows}
    common = {
        "steps": f"{settings['total_steps']} ({settings['steps_per_epoch']}/epoch, warmup {settings['warmup_steps']})",
        "lr": f"{c['optim']['lr']:g} ({c['optim']['schedule']})",
        "precision": f"{c['dtype']} weights, autocast {c['mixed_precision']}",
        "trainable": f"{settings['trainable_parameters']:,} parameters",
    }
    for key, value in common.items():
        table.setdefault(key, value)
    if start_step:
        table["resuming"] = f"from step {start_step}"
    console = Console(stderr=True)
    shown = Table(title=f"seganswer {command} -> {run.path}", show_header=False)
    for key, value in table.items():
        shown.add_row(key, str(value))
    console.print(shown)
    for name, errors in skipped.items():
        if errors.skipped:
            console.print(f"{name}: {errors.summary()}", highlight=False)


# -- the end: the final model and its training record ------------------------------------------------


def save_trained_model(accelerator, run, model, dtype: str, info, *, show: bool) -> Path:
    """The end of every stage: on the main process, cast ``model`` to the run's ``dtype`` (its
    trainable parts were kept in float32), write it with ``info()`` as its training record into
    ``run``'s ``model/`` (atomically: ``runs.save_final_model``) and say so when ``show``; every
    process then waits. Returns the model folder."""
    if accelerator.is_main_process:
        cast_to_run_dtype(model, dtype)
        extra = info()
        with quiet_transformers():
            runs.save_final_model(run, lambda folder: model.save_pretrained(folder, extra_info=extra))
        if show:
            print(f"wrote {run.model_dir}")
    accelerator.wait_for_everyone()
    return run.model_dir
