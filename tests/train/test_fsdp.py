"""FSDP2 (``strategy: fsdp``) on CPU: two processes (torchrun, gloo) against the references.

- Stage 1 phase lora and Stage 2: two sharded processes with one sample per micro-step equal one
  process with the same global batch (twice the micro-steps of one sample: the same samples, the
  same per-sample loss mean); Stage 3: two sharded processes equal two DDP processes (rollouts are
  seeded per process, so one process would sample other trajectories; with the same seeds the
  rollouts, rewards and policy loss are the same).
- Tolerance: losses and rewards to 1e-5 relative, weights and model outputs to 1e-5 absolute. FSDP2
  sums gradients by reduce-scatter in another order than one process's accumulation (float
  addition is not associative), so gradients differ in their last bits (measured: gradient norms
  to 3e-7 relative, weights to 6e-7 after three AdamW steps); the forwards of the first step see
  the same weights and their losses are bit-identical.
- A run killed with SIGKILL after a sharded checkpoint and resumed equals the uninterrupted run
  bit for bit (weights and metrics); resuming it on another process count is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from stage1_helpers import train_records

from seganswer_cli.config import Stage2Config, load_config
from seganswer_cli.errors import UsageError
from seganswer_cli.model import SegAnswerModel
from seganswer_cli.train import runs

TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
TIMINGS = ("samples_per_s", "pass1_s", "rollout_seconds", "update_seconds")


def cli(args: list[str], processes: int, port: int, **kwargs) -> subprocess.CompletedProcess | subprocess.Popen:
    """``seganswer ARGS`` on ``processes`` processes (torchrun when more than one)."""
    launcher = [TORCHRUN, "--nproc_per_node", str(processes), "--master_port", str(port)] if processes > 1 \
        else [sys.executable]
    command = [*launcher, "-m", "seganswer_cli", *args, "--quiet"]
    if kwargs.pop("background", False):
        return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in train_records(run_dir)]


def assert_same_training(one: Path, two: Path, keys: tuple[str, ...]) -> None:
    a, b = records(one), records(two)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        for key in keys:
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key)


def assert_same_models(one: Path, two: Path, image, expression: str = "the red circle") -> None:
    """Weights, and the outputs of one Stage 1 forward (last hidden states, mask logits), within 1e-5."""
    a, b = SegAnswerModel.from_pretrained(one / "model"), SegAnswerModel.from_pretrained(two / "model")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], atol=1e-5, rtol=1e-5)
    outputs = []
    for model in (a, b):
        from seganswer_cli.model.conversation import stage1_sequence

        with torch.no_grad():
            out = model([stage1_sequence(model, model.global_view(image), expression)], [image])
        outputs.append((out.hidden_states, out.masks[0].low_res_logits))
    for x, y in zip(*outputs):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def image(shapes_split):
    from PIL import Image

    return Image.open(sorted(p for p in shapes_split[1].rglob("*.png"))[0]).convert("RGB")


@pytest.fixture(scope="module")
def vqa_data(tmp_path_factory):
    from seganswer_cli.data import ShapesConfig, write_synthetic

    root = tmp_path_factory.mktemp("fsdp-vqa")
    return write_synthetic(root / "vqa", "vqa", 32, ShapesConfig(width=96, height=96, min_size=32, max_size=64), seed=0)


def stage2_args(data, out, *extra: str, model: str = "tiny") -> list[str]:
    """The tiny Stage 2 recipe from a random tiny preset (no Stage 1 needed to compare engines)."""
    return ["train-stage2", "-c", "stage2-tiny", "--model", model, "--data", f"shapes={data}", "--set",
            "allow_untrained_start=true", "--out", str(out), *extra]


# ---------------------------------------------------------------------- settings


def test_strategy_settings_are_checked():
    assert Stage2Config().strategy == "ddp"
    assert load_config(Stage2Config, None, {"strategy": "fsdp", "cpu_offload": True}).cpu_offload
    for bad, match in [({"strategy": "zero3"}, "unknown strategy"), ({"cpu_offload": True}, "fsdp only"),
                       ({"strategy": "fsdp", "mixed_precision": "fp16"}, "bf16")]:
        with pytest.raises(UsageError, match=match):
            load_config(Stage2Config, None, bad)
    paper = load_config(Stage2Config, "stage2-7b")
    assert paper.strategy == "fsdp" and paper.mixed_precision == "bf16"


def test_fsdp_on_one_process_says_so_and_runs_as_one(vqa_data, tmp_path):
    done = cli(stage2_args(vqa_data, tmp_path / "run", "--strategy", "fsdp", "--max-steps", "1"), 1, 0)
    assert "strategy fsdp on one process: nothing to shard, running as one process" in done.stderr
    assert runs.RunFolder(tmp_path / "run").is_finished


# ---------------------------------------------------------------------- two sharded processes


@pytest.mark.slow
def test_stage1_lora_two_sharded_processes_equal_one_process(shapes_split, image, tmp_path):
    """LoRA dropout off (its masks are drawn per process); validation runs on gathered weights."""
    args = ["train-stage1", "-c", "stage1-tiny", "--phase", "lora", "--model", "tiny", "--data",
            f"shapes={shapes_split[0]}", "--val-data", str(shapes_split[1]), "--max-steps", "3", "--eval-every", "2",
            "--lr", "1e-3", "--set", "lora.dropout=0", "--set", "val_limit=4"]
    cli([*args, "--out", str(tmp_path / "one"), "--batch-size", "1", "--grad-accum", "2"], 1, 0)
    cli([*args, "--out", str(tmp_path / "two"), "--batch-size", "1", "--strategy", "fsdp"], 2, 29541)
    assert runs.RunFolder(tmp_path / "two").read_settings()["processes"] == 2
    assert_same_training(tmp_path / "one", tmp_path / "two", ("loss", "lm", "focal", "dice", "grad_norm", "lr"))
    evals = [[r["val_giou"] for r in runs.MetricsLog(d / "metrics.jsonl").read() if r["kind"] == "eval"]
             for d in (tmp_path / "one", tmp_path / "two")]
    assert evals[0] == pytest.approx(evals[1], abs=1e-6) and len(evals[0]) == 3
    assert (runs.RunFolder(tmp_path / "two").latest_checkpoint() / runs.SHARDED / ".metadata").is_file()
    assert_same_models(tmp_path / "one", tmp_path / "two", image)  # LoRA merged in both


@pytest.mark.slow
@pytest.mark.parametrize("model, port", [("tiny", 29542), ("tiny-qwen3-vl", 29543)])
def test_stage2_two_sharded_processes_equal_one_process(vqa_data, image, tmp_path, model, port):
    """Half the samples answer directly, so the processes run pass 1 unevenly (on gathered weights),
    and two micro-steps accumulate per update. On each backbone (Qwen3-VL: its DeepStack mergers
    sit in the vision tower's unit)."""
    args = ["--max-steps", "3", "--batch-size", "1", "--direct-share", "0.5"]
    cli(stage2_args(vqa_data, tmp_path / "one", *args, "--grad-accum", "4", model=model), 1, 0)
    cli(stage2_args(vqa_data, tmp_path / "two", *args, "--grad-accum", "2", "--strategy", "fsdp", model=model), 2, port)
    assert {r["direct"] for r in records(tmp_path / "two")} != {0.0}
    assert_same_training(tmp_path / "one", tmp_path / "two", ("loss", "grad_norm", "lr"))
    assert records(tmp_path / "one")[0]["loss"] == records(tmp_path / "two")[0]["loss"]  # the first step: exact
    assert_same_models(tmp_path / "one", tmp_path / "two", image)


@pytest.mark.slow
def test_stage3_two_sharded_processes_equal_two_ddp_processes(stage3_folders, image, tmp_path):
    model_dir, data_dir = stage3_folders
    args = ["train-stage3", "-c", "stage3-tiny", "--model", str(model_dir), "--data", f"shapes={data_dir}",
            "--max-steps", "2", "--set", "prompts_per_step=2"]
    cli([*args, "--out", str(tmp_path / "ddp")], 2, 29543)
    cli([*args, "--out", str(tmp_path / "fsdp"), "--strategy", "fsdp"], 2, 29544)
    a, b = records(tmp_path / "ddp"), records(tmp_path / "fsdp")
    for x, y in zip(a, b, strict=True):  # the same rollouts: rewards and token counts exactly
        assert (x["reward"], x["accuracy"], x["format"], x["loss_tokens"]) == \
               (y["reward"], y["accuracy"], y["format"], y["loss_tokens"])
    assert_same_training(tmp_path / "ddp", tmp_path / "fsdp", ("loss", "grad_norm", "clip_low_fraction"))
    assert_same_models(tmp_path / "ddp", tmp_path / "fsdp", image)


@pytest.fixture(scope="module")
def stage3_folders(patterned_model, tmp_path_factory):
    """The stand-in Stage 2 model (it segments, then answers) and shapes-world RL prompts."""
    from seganswer_cli.data import ShapesConfig, write_synthetic

    root = tmp_path_factory.mktemp("fsdp-stage3")
    patterned_model[0].save_pretrained(root / "stage2")
    config = ShapesConfig(width=96, height=96, min_size=24, max_size=48, min_objects=1, max_objects=2,
                          colours=("red", "blue"), kinds=("circle", "square"))
    write_synthetic(root / "rl", "rl", 32, config, seed=0)
    return root / "stage2", root / "rl"


# ---------------------------------------------------------------------- kill -9 and --resume


@pytest.mark.slow
def test_sigkill_after_a_sharded_checkpoint_then_resume_equals_an_uninterrupted_run(vqa_data, tmp_path):
    # long enough that the kill lands mid-run: after the first checkpoint, well before the end
    args = ["--max-steps", "24", "--save-every", "4", "--batch-size", "1", "--strategy", "fsdp"]
    cli(stage2_args(vqa_data, tmp_path / "full", *args), 2, 29545)
    killed = tmp_path / "killed"
    proc = cli(stage2_args(vqa_data, killed, *args), 2, 29546, background=True)
    run = runs.RunFolder(killed)
    deadline = time.monotonic() + 300
    while run.latest_checkpoint() is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    import psutil  # accelerate's dependency

    for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        p.send_signal(signal.SIGKILL)  # both workers (torchrun starts them in their own sessions), then torchrun
    proc.wait()
    assert not run.is_finished and run.latest_checkpoint() is not None
    assert len(records(killed)) < 24
    kept = sorted(p.name for p in run.checkpoints())

    refused = subprocess.run([sys.executable, "-m", "seganswer_cli", *stage2_args(vqa_data, killed, *args),
                              "--resume"], capture_output=True, text=True, timeout=600, env=ENV)
    assert refused.returncode == 2
    assert "was written sharded (strategy fsdp) by 2 process(es); this launch has 1" in refused.stderr
    assert sorted(p.name for p in run.checkpoints()) == kept and not run.is_finished  # nothing written

    cli([*stage2_args(vqa_data, killed, *args), "--resume"], 2, 29547)
    assert records(tmp_path / "full") == records(killed)  # bit for bit, the loss and gradient norm included
    full = SegAnswerModel.from_pretrained(tmp_path / "full" / "model").state_dict()
    resumed = SegAnswerModel.from_pretrained(killed / "model").state_dict()
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    state = json.loads((run.latest_checkpoint() / runs.TRAINER_STATE).read_text())
    assert state["sharded"] is True and state["processes"] == 2


# ---------------------------------------------------------------------- Stage 3's first ratio


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_stage3_first_ratio_of_an_on_policy_step_is_exactly_one(stage3_folders, tmp_path, monkeypatch,
                                                               mixed_precision):
    """``logp_old`` recomputed by the training forward (the default): the first update's ratios are
    exactly 1, in float32 and bf16. From the sampler's cached decode they differ by its rounding
    (rollouts now run in the update's precision, so the gap is rounding, not bf16 against float32)."""
    from seganswer_cli.config import Stage3Config
    from seganswer_cli.train import stage3

    model_dir, data_dir = stage3_folders
    gaps = {}
    original = stage3.dapo_policy_loss

    def watched(logprobs, old, advantages, mask, **kwargs):
        gaps.setdefault(recompute, float(((logprobs.detach() - old).abs() * mask).max()))
        return original(logprobs, old, advantages, mask, **kwargs)

    from accelerate.state import AcceleratorState

    monkeypatch.setattr(stage3, "dapo_policy_loss", watched)
    AcceleratorState._reset_state(reset_partial_state=True)  # accelerate keeps one precision per process
    for recompute in (True, False):
        config = load_config(Stage3Config, "stage3-tiny", {
            "model": str(model_dir), "data": [f"shapes={data_dir}"], "max_steps": 1, "prompts_per_step": 2,
            "mixed_precision": mixed_precision, "recompute_logprobs": recompute})
        stage3.train_stage3(config, tmp_path / str(recompute), quiet=True)
    AcceleratorState._reset_state(reset_partial_state=True)
    assert gaps[True] == 0.0
    assert 0.0 < gaps[False] < (1e-3 if mixed_precision == "bf16" else 1e-5)
