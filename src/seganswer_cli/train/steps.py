"""What a training step calls, in every stage (Stage 1, 2, 3 and the demo's stand-in): the seeded
sample stream a resumed run picks up at its data position, reductions over processes, gradient
clipping, the stop on a non-finite loss or gradient, and the progress bar.

What a stage does before its first step and after its last is ``stage_setup.py``'s; what a run
folder holds is ``runs.py``'s.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from seganswer_cli.train import runs


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


def sum_over_processes(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item())


def gather_ints(accelerator, value: int) -> list[int]:
    """``value`` of every process, in rank order."""
    if accelerator.num_processes == 1:
        return [int(value)]
    t = torch.tensor([int(value)], dtype=torch.long, device=accelerator.device)
    return [int(v) for v in accelerator.gather(t).tolist()]


def clip_gradients(accelerator, model, max_norm: float | None) -> torch.Tensor:
    """Clip to ``max_norm`` (when set) and return the global norm before clipping."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = accelerator.clip_grad_norm_(params, max_norm if max_norm is not None else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor over the shards


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


def progress_print(progress: TrainProgress | None, line: str) -> None:
    """A line printed above the progress bar, or plainly when there is none; on stderr either way
    (progress reports, like the bar: stdout keeps the results)."""
    if progress is not None and progress.enabled:
        progress.console.print(line, highlight=False)
    else:
        print(line, file=sys.stderr, flush=True)
