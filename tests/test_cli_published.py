"""Every command on the 7B preset built from a published-layout MLLM folder (``published_mllm.py``):
``model init`` (the session fixture), ``model info``, ``infer``, ``segment``, Stage 1 both phases,
``merge-lora``, Stage 2, Stage 3 and ``eval``, one or two steps each, exit 0."""

from __future__ import annotations

import pytest
from PIL import Image

from test_cli_train import run_cli

SMALL = ["--size", "64x64", "--min-size", "16", "--max-size", "32"]


@pytest.mark.slow
def test_every_command_runs_on_the_published_layout(monkeypatch, capsys, tmp_path, published_model):
    def ok(*args):
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code in (0, None), f"seganswer {' '.join(map(str, args))}\n{err}"
        return out, err

    for kind in ("refseg", "vqa"):
        ok("data", "synth", "--kind", kind, "--n", "4", *SMALL, "--seed", "0", "--out", tmp_path / kind)
    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), "red").save(image)

    ok("model", "info", published_model)
    code, _, err = run_cli(monkeypatch, capsys, "infer", image, "What colour is it?", "--model", published_model,
                           "--max-new-tokens", "3")
    assert code in (0, None, 3), err  # 3: random weights gave no answer
    ok("segment", image, "the red square", "--model", published_model, "--save-mask", tmp_path / "mask.png")
    refseg, vqa = f"s={tmp_path / 'refseg'}", f"s={tmp_path / 'vqa'}"
    steps = ["--max-steps", "1", "--batch-size", "2", "--quiet"]
    ok("train-stage1", "-c", "stage1-tiny", "--phase", "projector", "--model", published_model, "--data", refseg,
       "--out", tmp_path / "s1p", *steps)
    ok("train-stage1", "-c", "stage1-tiny", "--phase", "lora", "--model", tmp_path / "s1p" / "model",
       "--data", refseg, "--out", tmp_path / "s1l", *steps)
    ok("merge-lora", tmp_path / "s1l", tmp_path / "merged")
    ok("train-stage2", "-c", "stage2-tiny", "--model", tmp_path / "merged", "--data", vqa, "--out", tmp_path / "s2",
       *steps)
    # Random weights are never right nor well formatted: every group's rewards would be equal and the
    # step would have nothing to learn from. The format reward is replaced by the completion's length
    # parity, so that one policy update runs on the published-layout model.
    from seganswer_cli.train import rewards

    monkeypatch.setitem(rewards.REWARDS, "format", lambda completions, **_: [float(len(c) % 2) for c in completions])
    ok("train-stage3", "-c", "stage3-tiny", "--model", tmp_path / "s2" / "model", "--data", vqa,
       "--out", tmp_path / "s3", "--max-steps", "1", "--quiet", "--set", "prompts_per_step=2",
       "--set", "rollouts_per_prompt=2", "--set", "max_new_tokens=4")
    ok("eval", "shapes-vqa", "--model", tmp_path / "s3" / "model", "--limit", "2", "--max-new-tokens", "4",
       "--out", tmp_path / "eval", "--quiet")
    assert (tmp_path / "eval" / "summary.json").is_file()
