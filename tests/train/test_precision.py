"""Every stage loads the precision its run states, and ``merge-lora`` writes it: tested on a model
whose MLLM is stored in bf16 (the published layout, ``published_mllm.py``) and whose SAM 2.1 and
projector are float32, so a run that kept "the checkpoint's own" dtype would show mixed dtypes."""

from __future__ import annotations

import sys

import pytest
import torch

from seganswer_cli.cli import main
from seganswer_cli.config import Stage1Config, Stage2Config, Stage3Config
from seganswer_cli.model.folder_checks import safetensors_header
from seganswer_cli.train.stage_setup import load_starting_model

SAFETENSORS_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
#: The autocast each run needs: frozen bf16 weights meet float32 trainables (as in ``stage1-7b``).
AUTOCAST = {"float32": "no", "bfloat16": "bf16"}
MODEL_FILES = ("mllm/model.safetensors", "mask_decoder.safetensors", "projector.safetensors")


def stored_dtypes(folder) -> dict[str, set[str]]:
    """Per weight file of a seganswer folder, the dtypes its header names."""
    return {name: {t.dtype for t in safetensors_header(folder / name).values()} for name in MODEL_FILES}


def loaded_dtypes(model) -> set[torch.dtype]:
    return {t.dtype for t in model.state_dict().values() if t.is_floating_point()}


def test_the_starting_folder_is_mixed(published_model):
    """The test bites: a load that kept each file's own dtype would give bf16 and float32 together."""
    assert stored_dtypes(published_model) == {"mllm/model.safetensors": {"BF16"}, "mask_decoder.safetensors": {"F32"},
                                              "projector.safetensors": {"F32"}}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("config_class", [Stage1Config, Stage2Config, Stage3Config], ids=["stage1", "stage2", "stage3"])
def test_every_stage_loads_the_runs_dtype(published_model, config_class, dtype):
    model = load_starting_model(config_class(model=str(published_model), dtype=dtype))
    assert loaded_dtypes(model) == {getattr(torch, dtype)}


def test_stage1_from_a_preset_with_local_copies_loads_the_runs_dtype(published_mllm, published_sam):
    config = Stage1Config(model="qwen2.5-vl-7b", mllm_path=str(published_mllm), sam_path=str(published_sam),
                          dtype="float32")
    assert loaded_dtypes(load_starting_model(config)) == {torch.float32}


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["seganswer", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    out = capsys.readouterr()
    assert info.value.code in (0, None), out.err
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_run_and_merge_write_the_runs_dtype(monkeypatch, capsys, tmp_path, published_model, dtype):
    """A Stage 1 lora step on the mixed folder, then ``merge-lora``: every tensor of the run's model
    and of the merged folder is in the run's dtype, and the merged SAM 2.1 and projector equal the
    run's own (the same final checkpoint)."""
    from accelerate.state import AcceleratorState
    from safetensors.torch import load_file

    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    data = tmp_path / "refseg"
    run_cli(monkeypatch, capsys, "data", "synth", "--kind", "refseg", "--n", "4", "--size", "64x64", "--min-size", "16",
            "--max-size", "32", "--seed", "0", "--out", data)
    run = tmp_path / "run"
    out = run_cli(monkeypatch, capsys, "train-stage1", "-c", "stage1-tiny", "--phase", "lora", "--model", published_model,
                  "--data", f"s={data}", "--out", run, "--max-steps", "1", "--batch-size", "2", "--set", f"dtype={dtype}",
                  "--set", f"mixed_precision={AUTOCAST[dtype]}")
    assert f"{dtype} weights, autocast {AUTOCAST[dtype]}" in out.err
    merged = tmp_path / "merged"
    run_cli(monkeypatch, capsys, "merge-lora", run, merged)
    AcceleratorState._reset_state(reset_partial_state=True)
    expected = SAFETENSORS_DTYPE[dtype]
    for folder in (run / "model", merged):
        assert stored_dtypes(folder) == dict.fromkeys(MODEL_FILES, {expected}), folder
    for name in ("mask_decoder.safetensors", "projector.safetensors"):
        ours, theirs = load_file(run / "model" / name), load_file(merged / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
