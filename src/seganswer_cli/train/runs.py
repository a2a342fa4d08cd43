"""Run folders: the layout every training stage writes, atomic checkpoints and ``--resume``.

Stages call these functions rather than copying them::

    RUN_DIR/
      settings.json          the resolved settings: stage, config, processes, global batch, versions
      metrics.jsonl          one JSON object per line: {"kind": "train"|"eval", "step": ..., ...}
      checkpoints/
        step-00000010/       written as .tmp-step-00000010/ then renamed: a folder named step-* is complete
          trainable.safetensors   every parameter that trains, by name (LoRA, projector, ...)
          optimizer.pt            the optimizer's state_dict
          scheduler.pt            the learning-rate scheduler's state_dict
          scaler.pt               the fp16 gradient scaler (fp16 only)
          rng-rank0.pt ...        python, numpy, torch (and CUDA) RNG states of each process
          trainer_state.json      step, samples drawn from the data stream, ...
          sharded/                strategy fsdp: model (what trains) and optimizer as
                                  torch.distributed.checkpoint shards, one file per process,
                                  in place of trainable.safetensors and optimizer.pt
      model/                 the final model folder (``SegAnswerModel.from_pretrained``); written
                             last, atomically, so its presence means the run finished

Policy (``check_run_folder``): a finished run is never written over without ``overwrite``; an
unfinished one is continued only with ``resume`` (which needs a checkpoint); anything else in the
folder is refused. Nothing is written until the caller has validated its inputs and calls
``start_run``.

Checkpoints hold only what trains, so a LoRA checkpoint of the 7B model is megabytes, and resume
rebuilds the frozen rest from the run's starting model (which must stay where it was). Files
are written by the main process (and each process's RNG file by that process) to a temporary
folder on a filesystem all processes share, then renamed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seganswer_cli import jsonl
from seganswer_cli.errors import SegAnswerError, UsageError, read_json

SETTINGS = "settings.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
MODEL = "model"
TRAINABLE = "trainable.safetensors"
TRAINER_STATE = "trainer_state.json"
SHARDED = "sharded"
CHECKPOINT_PREFIX = "step-"


class NonFiniteLossError(SegAnswerError):
    """The loss (or the gradient norm) became NaN or infinite; the run stopped before updating."""


class RunFolder:
    """Paths and read-only queries of one run folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    settings_path = property(lambda self: self.path / SETTINGS)
    metrics_path = property(lambda self: self.path / METRICS)
    checkpoints_dir = property(lambda self: self.path / CHECKPOINTS)
    model_dir = property(lambda self: self.path / MODEL)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def is_run(self) -> bool:
        return self.settings_path.is_file()

    @property
    def is_finished(self) -> bool:
        return self.model_dir.is_dir()

    def read_settings(self) -> dict[str, Any]:
        if not self.is_run:
            raise UsageError(f"{self.path} is not a run folder (no {SETTINGS})")
        return read_json(self.settings_path, UsageError)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary folders of an interrupted write are ignored)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [p for p in self.checkpoints_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
        return sorted(found, key=checkpoint_step)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def checkpoint(self, name: str | None) -> Path:
        """The checkpoint called ``name`` (``step-00000010`` or ``10``), or the latest when None."""
        if name is None:
            latest = self.latest_checkpoint()
            if latest is None:
                raise UsageError(f"{self.path} has no checkpoint (nothing under {CHECKPOINTS}/)")
            return latest
        wanted = name if name.startswith(CHECKPOINT_PREFIX) else checkpoint_name(int(name)) if name.isdigit() else name
        path = self.checkpoints_dir / wanted
        if not (path / TRAINER_STATE).is_file():
            have = ", ".join(p.name for p in self.checkpoints()) or "none"
            raise UsageError(f"no checkpoint {name!r} in {self.path} (have: {have})")
        return path


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


# -- starting, resuming, refusing -----------------------------------------------------------------


def check_run_folder(path: str | os.PathLike, *, resume: bool, overwrite: bool) -> RunFolder:
    """Apply the run-folder policy without writing anything; returns the folder.

    - ``resume``: the folder must be a run with a checkpoint and not finished;
    - otherwise the folder must not exist, be empty, or (with ``overwrite``) be a run folder.
    """
    run = RunFolder(path)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if resume:
        if not run.is_run:
            raise UsageError(f"cannot resume: {run.path} is not a run folder (no {SETTINGS})")
        if run.is_finished:
            raise UsageError(f"cannot resume: the run in {run.path} already finished (its {MODEL}/ exists)")
        latest = run.latest_checkpoint()
        if latest is None:
            raise UsageError(f"cannot resume: {run.path} has no checkpoint yet; start it again with --overwrite")
        problem = checkpoint_problem(latest)
        if problem is not None:
            raise UsageError(f"cannot resume: the latest checkpoint {latest} is damaged ({problem}); remove it to "
                             "resume from the one before")
        return run
    if not run.path.exists() or (run.path.is_dir() and not any(run.path.iterdir())):
        return run
    if not run.path.is_dir():
        raise UsageError(f"{run.path} exists and is not a folder")
    if not run.is_run:
        raise UsageError(f"{run.path} exists and is not a run folder; choose a new --out")
    if not overwrite:
        state = "a finished run" if run.is_finished else "an unfinished run (continue it with --resume)"
        raise UsageError(f"{run.path} holds {state}; pass --overwrite to replace it")
    return run


@dataclass(frozen=True)
class ContinueDecision:
    """What ``--continue`` does with a run folder: ``action`` is ``finished`` (nothing to do),
    ``resume`` (from the latest checkpoint), ``start`` (a new or empty folder) or ``restart`` (the
    same run, started but with no checkpoint yet: nothing to keep); ``message`` says it in a line."""

    action: str
    message: str


#: Files a complete checkpoint must hold (``scaler.pt`` and the RNG files are checked when loaded).
CHECKPOINT_FILES = (TRAINABLE, "optimizer.pt", "scheduler.pt", TRAINER_STATE)


#: Files a complete sharded (``strategy: fsdp``) checkpoint must hold.
SHARDED_CHECKPOINT_FILES = (f"{SHARDED}/.metadata", "scheduler.pt", TRAINER_STATE)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint folder (a missing file, an unreadable trainer state), or None."""
    wanted = SHARDED_CHECKPOINT_FILES if (checkpoint / SHARDED).is_dir() else CHECKPOINT_FILES
    missing = [name for name in wanted if not (checkpoint / name).is_file()]
    if missing:
        return f"it lacks {', '.join(missing)}"
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"its {TRAINER_STATE} cannot be read ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"its {TRAINER_STATE} has no step"
    return None


def continue_decision(path: str | os.PathLike, *, stage: str, phase: str | None = None) -> ContinueDecision:
    """The run-folder rule of ``--continue``, for a run of ``stage`` (and Stage 1's ``phase``):
    finished (``model/`` exists) -> nothing to do; a complete checkpoint -> resume; nothing there, or
    this run started without a checkpoint yet -> start. ``UsageError`` (nothing is written) for a
    folder that is not a run, a run of another stage or phase, or a damaged latest checkpoint."""
    run = RunFolder(path)
    if not run.path.exists() or (run.path.is_dir() and not any(run.path.iterdir())):
        return ContinueDecision("start", "starting a new run")
    if not run.path.is_dir():
        raise UsageError(f"{run.path} exists and is not a folder")
    if not run.is_run:
        raise UsageError(f"{run.path} is not a run folder (no {SETTINGS}) and not empty; choose a new --out")
    saved = run.read_settings()
    saved_phase = (saved.get("config") or {}).get("phase") if phase is not None else None
    if saved.get("stage") != stage or saved_phase != phase:
        what = f"{saved.get('stage')!r}" + (f" (phase {saved_phase})" if saved_phase else "")
        wanted = stage + (f" (phase {phase})" if phase else "")
        raise UsageError(f"{run.path} holds a {what} run, not {wanted}; choose another --out")
    if run.is_finished:
        return ContinueDecision("finished", f"finished already ({MODEL}/ exists); nothing to do")
    latest = run.latest_checkpoint()
    if latest is None:
        return ContinueDecision("restart", "started before but no checkpoint was written; starting it again")
    problem = checkpoint_problem(latest)
    if problem is not None:
        raise UsageError(f"cannot continue: the latest checkpoint {latest} is damaged ({problem}); remove it "
                         "to resume from the one before, or start again with --overwrite")
    return ContinueDecision("resume", f"resuming from {latest.name}")


def resumed_config(run: RunFolder, given, *, stage: str, defaults):
    """The config a ``--resume`` continues with: the run's own, read from ``settings.json``.

    ``given`` is what this launch asked for and ``defaults`` the config with nothing asked; only
    the keys the user set (those differing from ``defaults``) must agree with the run, and one
    that contradicts it is an error: a resumed run must be the run that was started.
    """
    from seganswer_cli.config import from_dict, to_dict

    saved = run.read_settings()
    if saved.get("stage") != stage:
        raise UsageError(f"{run.path} is a {saved.get('stage')!r} run, not {stage}")
    saved_config = from_dict(type(given), saved["config"], where=str(run.settings_path))
    given_dict, default_dict = to_dict(given.resolved()), to_dict(defaults.resolved())
    asked = {k: v for k, v in given_dict.items() if v != default_dict.get(k)}
    differences = settings_differences({k: to_dict(saved_config)[k] for k in asked}, asked)
    if differences:
        raise UsageError(f"--resume: settings differ from the run's: {'; '.join(differences)}")
    return saved_config


def start_run(run: RunFolder, settings: dict[str, Any], *, overwrite: bool) -> None:
    """Create the folder and write ``settings.json`` (main process only). With ``overwrite`` an
    existing run folder is removed first (``check_run_folder`` made sure it is one)."""
    if overwrite and run.is_run:
        shutil.rmtree(run.path)
    run.path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.settings_path, settings)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def settings_differences(saved: dict[str, Any], given: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested settings dicts."""
    out = []
    for key in sorted(set(saved) | set(given)):
        a, b = saved.get(key), given.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name} (run: {a!r}, given: {b!r})")
    return out


# -- metrics log ----------------------------------------------------------------------------------


class MetricsLog:
    """``metrics.jsonl``: appended one line per record, flushed at once (a killed run keeps its log; a
    line cut by the kill is skipped by ``read`` and dropped on resume, see ``seganswer_cli.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with jsonl.JsonlAppender(self.path, sort_keys=True) as log:
            log.write(record)

    def read(self) -> list[dict[str, Any]]:
        return jsonl.read_records(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after ``step`` (those a resumed run computes again)."""
        jsonl.rewrite(self.path, [r for r in self.read() if r.get("step", 0) <= step], sort_keys=True)


# -- atomic folders ---------------------------------------------------------------------------------


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to ``final`` (replacing nothing:
    ``final`` must not exist); on failure remove it."""
    final = Path(final)
    if final.exists():
        raise UsageError(f"{final} already exists; refusing to write over it")
    tmp = final.with_name(f".tmp-{final.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, final)


# -- trainable state and RNG ------------------------------------------------------------------------


def trainable_names(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that train, in ``named_parameters`` order."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the parameters that train, by name."""
    return {name: p.detach().to("cpu", copy=True).contiguous()
            for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into the trainable parameters of ``model``; names must match exactly."""
    params = dict(model.named_parameters())
    expected = set(trainable_names(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise UsageError(
            f"checkpoint does not fit the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def capture_rng_state() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) RNG states, as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- checkpoints --------------------------------------------------------------------------------------


def save_checkpoint(run: RunFolder, accelerator, *, step: int, model, optimizer, scheduler,
                    trainer_state: dict[str, Any], keep: int) -> Path:
    """Write ``checkpoints/step-N`` atomically from every process; keep the newest ``keep``.

    Every process must call this (each writes its own RNG file); returns the checkpoint folder.
    """
    from safetensors.torch import save_file

    final = run.checkpoints_dir / checkpoint_name(step)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        if final.exists():  # a step can only be checkpointed once per run; a rerun after resume rewrites it
            shutil.rmtree(final)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(capture_rng_state(), tmp / f"rng-rank{accelerator.process_index}.pt")
    unwrapped = accelerator.unwrap_model(model)
    sharded = is_sharded(unwrapped)
    if sharded:  # every process writes its own shards (a collective)
        import torch.distributed.checkpoint as dcp

        dcp.save(sharded_state(unwrapped, optimizer), checkpoint_id=tmp / SHARDED)
    accelerator.wait_for_everyone()  # every RNG file (and shard) is written before the main process renames the folder
    if not sharded:
        names = trainable_names(unwrapped)
        full = accelerator.get_state_dict(model)  # gathers sharded (FSDP/DeepSpeed) weights on the main process
    if accelerator.is_main_process:
        if not sharded:
            state = {n: full[n].detach().to("cpu", copy=True).contiguous() for n in names}
            save_file(state, tmp / TRAINABLE)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        payload = dict(trainer_state, step=step, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                       processes=accelerator.num_processes, **({"sharded": True} if sharded else {}))
        (tmp / TRAINER_STATE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, final)
        for old in run.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def is_sharded(model: torch.nn.Module) -> bool:
    """True when ``model``'s parameters are FSDP2 shards (``DTensor``)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def sharded_state(model: torch.nn.Module, optimizer=None) -> dict[str, Any]:
    """What a sharded checkpoint holds, as ``torch.distributed.checkpoint`` saves and loads it:
    ``model``, the parameters that train (each process's shards, by name), and ``optimizer``,
    AdamW's state of them (``optimizer``: accelerate's wrapper or a torch optimizer)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    names = set(trainable_names(model))
    if optimizer is None:
        return {"model": {k: v for k, v in get_model_state_dict(model).items() if k in names}}
    model_state, optim_state = get_state_dict(model, [getattr(optimizer, "optimizer", optimizer)])
    return {"model": {k: v for k, v in model_state.items() if k in names}, "optimizer": optim_state}


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


def load_checkpoint(checkpoint: Path, accelerator, *, model, optimizer=None, scheduler=None) -> dict[str, Any]:
    """Restore trainable weights (and, when given, optimizer, scheduler, scaler and this process's
    RNG) from ``checkpoint``; returns its trainer state. Call after ``accelerator.prepare`` so the
    optimizer state lands on the parameters' device."""
    from safetensors.torch import load_file

    unwrapped = accelerator.unwrap_model(model)
    written_sharded, sharded = (checkpoint / SHARDED).is_dir(), is_sharded(unwrapped)
    if written_sharded or sharded:
        written = read_trainer_state(checkpoint).get("processes")
        if written != accelerator.num_processes or written_sharded != sharded:
            how = "sharded (strategy fsdp)" if written_sharded else "unsharded"
            raise UsageError(f"{checkpoint.name} was written {how} by {written} process(es); this launch has "
                             f"{accelerator.num_processes}: resume with torchrun --nproc-per-node {written}")
    if written_sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_state_dict,
        )

        state = sharded_state(unwrapped, optimizer)
        dcp.load(state, checkpoint_id=checkpoint / SHARDED)  # each process reads its own shards, in place
        options = StateDictOptions(strict=False)  # what trains only; the frozen rest came with the starting model
        if optimizer is None:
            set_model_state_dict(unwrapped, state["model"], options=options)
        else:
            set_state_dict(unwrapped, [getattr(optimizer, "optimizer", optimizer)], model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"], options=options)
    else:
        load_trainable_state(unwrapped, load_file(checkpoint / TRAINABLE))
    if optimizer is not None and not written_sharded:
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    if accelerator.scaler is not None and (checkpoint / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(checkpoint / "scaler.pt", weights_only=True))
    rng_file = checkpoint / f"rng-rank{accelerator.process_index}.pt"
    if optimizer is not None:
        if not rng_file.is_file():
            raise UsageError(f"{checkpoint} has no RNG state for process {accelerator.process_index} "
                             "(resume with the number of processes the run was started with)")
        restore_rng_state(torch.load(rng_file, weights_only=True))
    return read_trainer_state(checkpoint)


def training_record(model, settings: dict[str, Any], run: RunFolder, *, stage: str, step: int,
                    **summary: Any) -> dict[str, Any]:
    """What a final model folder's ``seganswer.json`` records about the run that made it: a summary
    (``training``: stage, the run folder's name, step and the stage's own ``summary`` fields; shown
    by ``seganswer model info``), the run's resolved settings (``training_settings``, its paths
    relative to the run folder: ``card_settings``) and one summary per run so far, oldest first
    (``training_history``). A card never holds the paths of the machine it was trained on."""
    this = {"stage": stage, "run": run.path.resolve().name, "step": step, **summary}
    history = list(model.info.get("training_history", []))
    return {"training": this, "training_settings": card_settings(settings, run),
            "training_history": [*history, this]}


#: Config keys that may hold a path (a preset name or hub id stays as it is).
PATH_SETTINGS = ("model", "mllm_path", "sam_path")


def card_settings(settings: dict[str, Any], run: RunFolder) -> dict[str, Any]:
    """``settings`` with every path of its config (starting model, data, validation data, local
    MLLM/SAM copies) written relative to the run folder, e.g. ``../3-stage2/model``, ``rl=../data/rl``."""
    from seganswer_cli.data.mixture import parse_data_spec, with_data_path

    def relative_spec(spec: str) -> str:
        return with_data_path(spec, relative_path(str(parse_data_spec(spec).path), run.path))

    config = dict(settings.get("config", {}))
    for key in PATH_SETTINGS:
        if isinstance(config.get(key), str):
            config[key] = relative_path(config[key], run.path)
    if isinstance(config.get("val_data"), str):
        config["val_data"] = relative_spec(config["val_data"])
    config["data"] = [relative_spec(spec) for spec in config.get("data", [])]
    return {**settings, "config": config}


def relative_path(value: str, folder: Path) -> str:
    """``value`` relative to ``folder`` when it is a path (absolute, or naming something that exists
    from here); anything else (a preset name, a hub id) as it is.

    >>> relative_path("/runs/demo/3-stage2/model", Path("/runs/demo/4-stage3"))
    '../3-stage2/model'
    >>> relative_path("shapes-base", Path("/runs/demo/0-standin"))
    'shapes-base'
    """
    path = Path(value).expanduser()
    if not (path.is_absolute() or path.exists()):
        return value
    return os.path.relpath(path.absolute(), folder.absolute())


def save_final_model(run: RunFolder, write: callable) -> Path:
    """Write ``model/`` atomically: ``write(tmp_folder)`` fills a temporary folder, then it is renamed."""
    with atomic_folder(run.model_dir) as tmp:
        write(tmp)
    return run.model_dir
