"""The second backbone through every stage on CPU: ``tiny-qwen3-vl`` (interleaved M-RoPE, DeepStack)
on the shapes world, with the same recipes and code as Qwen2.5-VL.

- Stage 1, projector then LoRA: the phases train what they train, the run's model loads back as Qwen3-VL;
- merge-lora: the merged model's logits and masks equal the unmerged LoRA model's;
- Stage 2 from the merged model and Stage 3 from a stand-in Stage 2 model (the patterned Qwen3-VL):
  a few steps each, the MLLM moves, projector and SAM 2.1 stay bit-identical.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from stage1_helpers import stage1_config

from seganswer_cli.config import Stage2Config, Stage3Config, load_config
from seganswer_cli.data import ShapesConfig, open_dataset, write_synthetic
from seganswer_cli.model import SegAnswerModel
from seganswer_cli.train import runs
from seganswer_cli.train.stage1 import train_stage1

SHAPES = ShapesConfig(width=96, height=96, min_size=24, max_size=48, min_objects=1, max_objects=2,
                      colours=("red", "blue"), kinds=("circle", "square"))


def is_qwen3(model) -> bool:
    return type(model.mllm).__name__ == "Qwen3VLForConditionalGeneration"


@pytest.fixture(scope="module")
def stage1_runs(shapes_split, tmp_path_factory):
    """The run folders of Stage 1 on tiny-qwen3-vl: projector 3 steps, then LoRA 6 steps from its model."""
    train, val = shapes_split
    root = tmp_path_factory.mktemp("qwen3-stage1")
    model = train_stage1(stage1_config(train, val, phase="projector", model="tiny-qwen3-vl", max_steps=3,
                                       eval_every=0), root / "projector", quiet=True)
    train_stage1(stage1_config(train, phase="lora", model=str(model), max_steps=6), root / "lora", quiet=True)
    return root / "projector", root / "lora"


def test_stage1_phases_train_what_the_paper_trains(stage1_runs):
    projector_dir, lora_dir = stage1_runs
    start = SegAnswerModel.from_preset("tiny-qwen3-vl")
    after_projector = SegAnswerModel.from_pretrained(projector_dir / "model")
    after_lora = SegAnswerModel.from_pretrained(lora_dir / "model")
    assert is_qwen3(after_projector) and is_qwen3(after_lora)
    assert after_lora.info["preset"] == "tiny-qwen3-vl"

    def changed(a, b, prefix):
        sa, sb = a.state_dict(), b.state_dict()
        return [k for k in sa if k.startswith(prefix) and not torch.equal(sa[k], sb[k])]

    # projector phase: the projector alone; lora: the language model (merged LoRA) and SAM's decoder
    assert changed(start, after_projector, "projector.") and not changed(start, after_projector, "mllm.")
    assert changed(after_projector, after_lora, "mllm.model.language_model.layers.")
    assert not changed(after_projector, after_lora, "mllm.model.visual.")  # the vision tower (DeepStack too) stays
    assert not changed(after_projector, after_lora, "mask_decoder.sam.vision_encoder.")
    losses = [r["loss"] for r in runs.MetricsLog(lora_dir / "metrics.jsonl").read() if r["kind"] == "train"]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))


def test_merged_model_equals_unmerged_lora_model(stage1_runs, shapes_split, tmp_path):
    from seganswer_cli.train.merge import load_lora_run, merge_lora_run
    from seganswer_cli.train.stage1 import stage1_inputs

    _, lora_dir = stage1_runs
    unmerged, _, _, _ = load_lora_run(lora_dir)
    merged = SegAnswerModel.from_pretrained(merge_lora_run(lora_dir, tmp_path / "merged"))
    assert is_qwen3(merged) and any(n.endswith("lora_A.default.weight") for n, _ in unmerged.named_parameters())
    samples = open_dataset(shapes_split[1]).take(4)
    outputs = []
    for model in (unmerged, merged):
        sequences, images, _ = stage1_inputs(model, samples)
        with torch.no_grad():
            out = model(sequences, images)
        outputs.append((model.logits(out.hidden_states), [m.low_res_logits for m in out.masks]))
    (logits_a, masks_a), (logits_b, masks_b) = outputs
    torch.testing.assert_close(logits_b, logits_a, atol=1e-4, rtol=1e-4)
    for a, b in zip(masks_a, masks_b):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def _frozen_and_trained(start_folder, run_dir):
    """Names of the run's trained tensors, and whether projector and SAM kept their start bits."""
    start = SegAnswerModel.from_pretrained(start_folder)
    final = SegAnswerModel.from_pretrained(run_dir / "model")
    assert is_qwen3(final)
    a, b = start.state_dict(), final.state_dict()
    moved = [k for k in a if not torch.equal(a[k], b[k])]
    return moved, all(torch.equal(a[k], b[k]) for k in a if k.startswith(("projector.", "mask_decoder.")))


def test_stage2_a_few_steps(stage1_runs, tmp_path):
    from seganswer_cli.train.merge import merge_lora_run
    from seganswer_cli.train.stage2 import train_stage2

    merged = merge_lora_run(stage1_runs[1], tmp_path / "merged")
    data = write_synthetic(tmp_path / "vqa", "vqa", 16, SHAPES, seed=0)
    config = load_config(Stage2Config, "stage2-tiny", {"model": str(merged), "data": [f"shapes={data}"],
                                                       "max_steps": 3})
    run_dir = tmp_path / "stage2"
    train_stage2(config, run_dir, quiet=True)
    moved, frozen_kept = _frozen_and_trained(merged, run_dir)
    assert frozen_kept and any(k.startswith("mllm.model.language_model.") for k in moved)
    assert any(k.startswith("mllm.model.visual.deepstack_merger_list.") for k in moved)  # DeepStack trains too
    records = [r for r in runs.MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3]


def test_stage3_a_few_steps(patterned_qwen3_model, tmp_path):
    from seganswer_cli.train.stage3 import train_stage3

    model, _ = patterned_qwen3_model
    model.save_pretrained(tmp_path / "stage2")
    data = write_synthetic(tmp_path / "rl", "rl", 16, SHAPES, seed=0)
    config = load_config(Stage3Config, "stage3-tiny", {"model": str(tmp_path / "stage2"), "data": [f"shapes={data}"],
                                                       "max_steps": 2, "prompts_per_step": 2})
    run_dir = tmp_path / "stage3"
    train_stage3(config, run_dir, quiet=True)
    moved, frozen_kept = _frozen_and_trained(tmp_path / "stage2", run_dir)
    assert frozen_kept and any(k.startswith("mllm.model.language_model.") for k in moved)
    records = [r for r in runs.MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2] and all(r["loss_tokens"] > 0 for r in records)
    assert any(r["segment_rate"] > 0 for r in records)  # rollouts took the segmented second look
    trained = load_file(runs.RunFolder(run_dir).latest_checkpoint() / runs.TRAINABLE)
    assert trained and not any(k.startswith(("model.projector", "model.mask_decoder")) for k in trained)
