"""``seganswer plan``: a JSON plan for a shipped recipe, the verdict's exit status, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _run(*args):
    return subprocess.run([sys.executable, "-m", "seganswer_cli", "plan", *args], capture_output=True, text=True,
                          timeout=300)


def test_plan_of_the_tiny_recipe_as_json():
    out = _run("-c", "stage1-tiny", "--set", "phase=lora", "--gpus", "1", "--gpu-memory", "16G", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["stage"] == "stage1" and plan["model"] == "tiny" and plan["fits"] and plan["suggestion"] is None
    assert {p["name"] for p in plan["parts"]} == {"vision tower", "language model", "projector", "SAM image encoder",
                                                  "SAM prompt enc. + mask decoder"}
    assert plan["ddp"]["per_gpu_gib"]["DDP buckets"] == 0  # one process: no buckets


def test_7b_stage2_under_ddp_does_not_fit_and_says_what_does():
    # the recipe itself names fsdp: the plan takes its strategy from there unless told
    assert _run("-c", "stage2-7b", "-m", "qwen2.5-vl-7b", "--json").returncode == 0
    out = _run("-c", "stage2-7b", "--model", "qwen2.5-vl-7b", "--gpus", "8", "--gpu-memory", "80GB",
               "--strategy", "ddp")
    assert out.returncode == 1, out.stderr
    assert "DDP on 8 GPUs: does not fit; fits with --strategy fsdp" in out.stdout
    assert _run("-c", "stage2-7b", "-m", "qwen2.5-vl-7b", "--strategy", "fsdp", "--json").returncode == 0


def test_qwen3_vl_8b_recipes_plan_from_the_command_line():
    out = _run("-c", "stage2-qwen3-vl-8b", "-m", "qwen3-vl-8b", "--strategy", "ddp")
    assert out.returncode == 1, out.stderr
    assert "DDP on 8 GPUs: does not fit; fits with --strategy fsdp" in out.stdout
    plan = json.loads(_run("-c", "stage3-qwen3-vl-8b", "-m", "qwen3-vl-8b", "--json").stdout)
    assert plan["model"] == "qwen3-vl-8b" and plan["strategy"] == "fsdp" and plan["fits"]
    assert 8.7e9 < plan["trainable"] < 8.85e9 and "32 px per token" in plan["assumptions"][0]
    lora = json.loads(_run("-c", "stage1-qwen3-vl-8b", "--set", "phase=lora", "--json").stdout)
    assert lora["model"] == "qwen3-vl-8b" and lora["strategy"] == "ddp" and lora["fits"]


@pytest.mark.parametrize("args, message", [
    (["-c", "stage9-nope"], "config not found: stage9-nope"),
    (["-c", "stage2-7b", "--gpu-memory", "eighty"], "--gpu-memory 'eighty'"),
    (["-c", "stage2-7b", "--gpus", "0"], "--gpus must be >= 1"),
    (["-c", "stage2-7b"], "give --model with a model folder or the preset of its architecture"),
    (["-c", "stage2-7b", "--model", "qwen9-vl"], "neither a model folder nor a preset"),
    (["-c", "stage2-7b", "-m", "tiny", "--strategy", "ddp", "--offload"], "--offload moves FSDP's shards"),
    (["-c", "stage1-tiny", "--set", "phase=bogus"], "unknown phase"),
])
def test_bad_input_is_one_line_and_non_zero(args, message):
    out = _run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.strip().count("\n") == 0 and message in out.stderr, out.stderr
