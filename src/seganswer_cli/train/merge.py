"""``seganswer merge-lora RUN_DIR OUT_DIR``: a Stage 1 LoRA run as one plain model folder.

The paper merges the LoRA weights into the MLLM after Stage 1 (§3.1). This rebuilds the run's
starting model, applies the run's LoRA configuration, loads a checkpoint's trainable state (LoRA
matrices, ``<|seg|>`` embedding rows, projector, SAM prompt encoder and mask decoder), folds the
adapters into the weights with peft's ``merge_and_unload`` and writes one self-describing folder
(``SegAnswerModel.save_pretrained``) in the run's ``dtype`` (every tensor) whose ``seganswer.json``
carries the run's resolved settings.
A ``lora`` run already ends this way in ``RUN_DIR/model/``; the command serves any checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from seganswer_cli.config import Stage1Config, from_dict
from seganswer_cli.errors import UsageError
from seganswer_cli.train import runs
from seganswer_cli.train.lora import merge_lora
from seganswer_cli.train.stage1 import STAGE, setup_trainable, training_record
from seganswer_cli.train.stage_setup import (
    cast_to_run_dtype,
    float32_trainables,
    load_starting_model,
    quiet_transformers,
)


def load_lora_run(run_dir: str | Path, checkpoint: str | None = None):
    """The unmerged model of a ``lora`` run at a checkpoint (latest by default), in eval mode.

    Returns ``(model, peft_model, settings, checkpoint_path)``.
    """
    from safetensors.torch import load_file

    run = runs.RunFolder(run_dir)
    settings = run.read_settings()
    if settings.get("stage") != STAGE:
        raise UsageError(f"{run.path} is a {settings.get('stage')!r} run; merge-lora takes a {STAGE} lora run")
    config = from_dict(Stage1Config, settings["config"], where=str(run.settings_path))
    if config.phase != "lora":
        raise UsageError(f"{run.path} is a {config.phase!r} run: it has no LoRA to merge (its {runs.MODEL}/ "
                         "folder is already a complete model)")
    path = run.checkpoint(checkpoint)
    model = load_starting_model(config)
    peft_model = setup_trainable(model, config)
    float32_trainables(model)
    runs.load_trainable_state(model, load_file(path / runs.TRAINABLE))
    return model.eval(), peft_model, settings, path


def merge_lora_run(run_dir: str | Path, out_dir: str | Path, *, checkpoint: str | None = None,
                   overwrite: bool = False) -> Path:
    """Write the merged model of a ``lora`` run's checkpoint to ``out_dir``; returns the folder."""
    out = Path(out_dir)
    check_output_folder(out, overwrite=overwrite)
    model, peft_model, settings, path = load_lora_run(run_dir, checkpoint)
    merge_lora(model, peft_model)
    cast_to_run_dtype(model, settings["config"]["dtype"])  # the trainables were float32; the folder is the run's dtype
    step = runs.read_trainer_state(path)["step"]
    info = training_record(model, settings, runs.RunFolder(run_dir), step)
    info["training"]["merged_from"] = path.name
    if out.exists():
        shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
    with runs.atomic_folder(out) as tmp, quiet_transformers():
        model.save_pretrained(tmp, extra_info=info)
    return out


def check_output_folder(out: Path, *, overwrite: bool) -> None:
    """``out`` must be new or empty, or (with ``overwrite``) a seganswer model folder."""
    from seganswer_cli.model.seganswer import MODEL_CARD

    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not (out / MODEL_CARD).is_file():
        raise UsageError(f"{out} exists and is not a seganswer model folder; choose a new OUT_DIR")
    if not overwrite:
        raise UsageError(f"{out} already holds a model; pass --overwrite to replace it")


__all__ = ["load_lora_run", "merge_lora_run"]
