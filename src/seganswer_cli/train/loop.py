"""Pieces every training stage's loop calls (Stage 1, Stage 2, Stage 3): the data and accelerator
set-up, AdamW and its schedule, the seeded sample stream, distributed reductions, the NaN stop, the
progress bar, package versions.

Stages call these rather than copying them; what a run folder holds is ``runs.py``'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from seganswer_cli import __version__
from seganswer_cli.errors import UsageError
from seganswer_cli.train import runs


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


def planned_steps(config, dataset_size: int, samples_per_step: int) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)`` of a run: ``max_steps`` when set, else ``epochs`` passes over
    ``dataset_size`` samples (or prompts) at ``samples_per_step`` per step (at least 1)."""
    steps_per_epoch = math.ceil(dataset_size / samples_per_step)
    return steps_per_epoch, config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))


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


def versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    return {"seganswer": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__}


def sample_stream(mixture, *, skip: int) -> Iterator:
    """The mixture's endless seeded draws, the first ``skip`` passed over (the data position of a
    resumed run: draws are cheap, no image is read)."""
    draws = iter(mixture)
    for _ in range(skip):
        next(draws)
    return draws


def reduce_mean(accelerator, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def clip_gradients(accelerator, model, max_norm: float | None) -> torch.Tensor:
    """Clip to ``max_norm`` (when set) and return the global norm before clipping."""
    params = [p for p in model.parameters() if p.requires_grad]
    return accelerator.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))


def stop_if_not_finite(accelerator, value: torch.Tensor, step: int, batch: list,
                       last_checkpoint: Path | None, what: str) -> None:
    """Stop every process (before any update) when ``value`` is NaN/inf on any of them."""
    if accelerator.scaler is not None and what == "gradient norm":
        return  # fp16: the scaler skips steps with inf gradients and lowers its scale; that is normal
    bad = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    if bad.item() > 0:
        ids = ", ".join(s.id for s in batch)
        kept = f"last good checkpoint kept: {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        raise runs.NonFiniteLossError(
            f"{what} is {value.float().flatten()[0].item()} at step {step}; stopped before updating "
            f"(samples of the step: {ids}); {kept}"
        )


@contextmanager
def quiet_transformers():
    """No transformers progress bars while loading or saving (the run prints its own lines)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


class TrainProgress:
    """rich progress bar with the loss and samples/s; a no-op when disabled (``--quiet``, workers)."""

    def __init__(self, total: int, completed: int, *, enabled: bool, label: str = "train") -> None:
        self.enabled = enabled
        self.console = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.console = Console(stderr=True)
            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.4f} · {task.fields[rate]:.1f} samples/s"),
                                TextColumn("{task.fields[extra]}"),
                                TimeRemainingColumn(), console=self.console, transient=False)
            self.task = self.bar.add_task("train", total=total, completed=completed, loss=float("nan"), rate=0.0,
                                          extra="")
            self.bar.start()

    def update(self, step: int, loss: float, rate: float, extra: str = "") -> None:
        """``extra``: a stage's own short readout after the loss (Stage 3: reward, accuracy, ...)."""
        if self.enabled:
            self.bar.update(self.task, completed=step, loss=loss, rate=rate, extra=extra)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
            self.enabled = False


def save_trained_model(accelerator, run, model, dtype: str, info, *, show: bool) -> Path:
    """The end of every stage: on the main process, cast ``model`` to the run's ``dtype`` (its
    trainable parts were kept in float32), write it with ``info()`` as its training record into
    ``run``'s ``model/`` (atomically: ``runs.save_final_model``) and say so when ``show``; every
    process then waits. Returns the model folder."""
    if accelerator.is_main_process:
        if dtype != "float32":
            model.to(getattr(torch, dtype))
        extra = info()
        with quiet_transformers():
            runs.save_final_model(run, lambda folder: model.save_pretrained(folder, extra_info=extra))
        if show:
            print(f"wrote {run.model_dir}")
    accelerator.wait_for_everyone()
    return run.model_dir
