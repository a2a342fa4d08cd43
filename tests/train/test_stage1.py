"""Stage 1 end to end on CPU: the tiny model on the shapes world.

- projector then lora: held-out mask IoU rises well above the untrained model's;
- a run interrupted after a checkpoint and resumed equals an uninterrupted run (weights and log);
- the merged model's masks and logits equal the unmerged LoRA model's;
- two data-parallel processes (torchrun, gloo) equal one process with the same global batch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stage1_helpers import stage1_config, train_records

from seganswer_cli.model.conversation import stage1_sequence
from seganswer_cli.train import runs
from seganswer_cli.train.stage1 import train_stage1


def eval_records(run_dir):
    return [r for r in runs.MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == "eval"]


def final_trainable(run_dir):
    return load_file(runs.RunFolder(run_dir).latest_checkpoint() / runs.TRAINABLE)


@pytest.fixture(scope="module")
def lora_run(shapes_split, tmp_path_factory):
    """A projector run (8 steps) then a lora run from its model (80 steps), both validated."""
    train, val = shapes_split
    root = tmp_path_factory.mktemp("stage1")
    projector = train_stage1(stage1_config(train, val, phase="projector", max_steps=8, eval_every=0),
                             root / "projector", quiet=True)
    train_stage1(stage1_config(train, val, phase="lora", model=str(projector), max_steps=80, eval_every=0),
                 root / "lora", quiet=True)
    return root / "projector", root / "lora"


@pytest.mark.slow
def test_projector_then_lora_raises_heldout_iou(lora_run):
    projector_dir, lora_dir = lora_run
    untrained = eval_records(projector_dir)[0]  # step 0 of the projector run: the untrained model
    after_projector = eval_records(projector_dir)[-1]
    final = eval_records(lora_dir)[-1]
    print(f"\nheld-out gIoU/cIoU: untrained {untrained['val_giou']:.3f}/{untrained['val_ciou']:.3f}, "
          f"after projector {after_projector['val_giou']:.3f}/{after_projector['val_ciou']:.3f}, "
          f"after lora {final['val_giou']:.3f}/{final['val_ciou']:.3f}")
    assert untrained["step"] == 0 and final["step"] == 80
    # seeded: on the reference CPU untrained 0.107/0.115 -> after lora about 0.32-0.39/0.29-0.31; on an
    # H100 (TF32 kernels, other rounding) the same recipe ended at 0.261/0.207, hence a smaller margin there
    margin = 0.12 if not torch.cuda.is_available() else 0.08
    assert final["val_giou"] > untrained["val_giou"] + margin and final["val_giou"] > 1.8 * untrained["val_giou"]
    assert final["val_ciou"] > untrained["val_ciou"] + margin and final["val_ciou"] > 1.8 * untrained["val_ciou"]
    losses = [r["loss"] for r in train_records(lora_dir)]
    assert sum(losses[-5:]) < sum(losses[:5])
    # the run folder carries its settings and a model every command loads
    settings = runs.RunFolder(lora_dir).read_settings()
    assert settings["config"]["phase"] == "lora" and settings["total_steps"] == 80
    from seganswer_cli.model import SegAnswerModel

    model = SegAnswerModel.from_pretrained(lora_dir / "model")
    assert model.info["training_settings"] == runs.card_settings(settings, runs.RunFolder(lora_dir))
    assert model.info["training"] == {"stage": "stage1", "phase": "lora", "run": lora_dir.name, "step": 80}
    # the card names runs and paths relative to the run, never the machine's folders
    card = (lora_dir / "model" / "seganswer.json").read_text()
    assert str(lora_dir.parent) not in card and str(Path.home()) not in card
    config = model.info["training_settings"]["config"]
    assert config["model"] == "../projector/model" and config["data"][0].startswith("shapes=../")
    assert [h["phase"] for h in model.info["training_history"]] == ["projector", "lora"]


@pytest.mark.slow
def test_merged_model_equals_unmerged_lora_model(lora_run, shapes_split, tmp_path):
    from seganswer_cli.data import open_dataset
    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.train.merge import load_lora_run, merge_lora_run
    from seganswer_cli.train.stage1 import stage1_inputs

    _, lora_dir = lora_run
    unmerged, _, settings, _ = load_lora_run(lora_dir)
    merged = SegAnswerModel.from_pretrained(merge_lora_run(lora_dir, tmp_path / "merged"))
    assert merged.info["training_settings"] == runs.card_settings(settings, runs.RunFolder(lora_dir))
    assert merged.info["training"]["merged_from"] == "step-00000080"
    at_end = SegAnswerModel.from_pretrained(lora_dir / "model")  # what the run itself wrote
    samples = open_dataset(shapes_split[1]).take(4)
    outputs = []
    for model in (unmerged, merged, at_end):
        sequences, images, _ = stage1_inputs(model, samples)
        with torch.no_grad():
            out = model(sequences, images)
            logits = model.logits(out.hidden_states)
        outputs.append((logits, [m.low_res_logits for m in out.masks]))
    reference_logits, reference_masks = outputs[0]
    assert any(n.endswith("lora_A.default.weight") for n, _ in unmerged.named_parameters())
    for logits, masks in outputs[1:]:
        torch.testing.assert_close(logits, reference_logits, atol=1e-4, rtol=1e-4)
        for a, b in zip(masks, reference_masks):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # the command writes the same folder
    from typer.testing import CliRunner

    from seganswer_cli.cli import app

    result = CliRunner().invoke(app, ["merge-lora", str(lora_dir), str(tmp_path / "by-cli"), "--quiet"])
    assert result.exit_code == 0, result.output
    by_cli = SegAnswerModel.from_pretrained(tmp_path / "by-cli")
    for name, value in merged.state_dict().items():
        assert torch.equal(value, by_cli.state_dict()[name]), name
    # and LoRA changed something: the merged MLLM differs from the projector-phase MLLM
    start = SegAnswerModel.from_pretrained(settings["config"]["model"])
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(start.mllm.state_dict()[q], merged.mllm.state_dict()[q])


def test_resume_after_kill_equals_uninterrupted_run(shapes_split, tmp_path):
    train, _ = shapes_split
    config = stage1_config(train, phase="lora", model="tiny", max_steps=4, save_every=2, batch_size=2)
    train_stage1(config, tmp_path / "full", quiet=True)
    # "killed" after step 3: step 3's update and log line are past the step-2 checkpoint, so lost
    train_stage1(config, tmp_path / "cut", quiet=True, stop_after_step=3)
    cut = runs.RunFolder(tmp_path / "cut")
    assert runs.checkpoint_step(cut.latest_checkpoint()) == 2 and not cut.is_finished
    assert [r["step"] for r in train_records(cut.path)] == [1, 2, 3]
    train_stage1(config, tmp_path / "cut", quiet=True, resume=True)
    assert cut.is_finished
    full_state, resumed_state = final_trainable(tmp_path / "full"), final_trainable(cut.path)
    assert full_state.keys() == resumed_state.keys()
    if not torch.cuda.is_available():  # CPU: bit for bit
        assert train_records(cut.path) == train_records(tmp_path / "full")
        for name in full_state:
            assert torch.equal(full_state[name], resumed_state[name]), name
    else:  # CUDA's atomic-add kernels differ in the last bits even between two fresh runs
        for a, b in zip(train_records(cut.path), train_records(tmp_path / "full"), strict=True):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
        for name in full_state:
            torch.testing.assert_close(full_state[name], resumed_state[name], rtol=1e-4, atol=1e-6)
    # the run changed the weights it trains (the comparison above is not between two untouched models)
    first = load_file(cut.checkpoints()[0] / runs.TRAINABLE)
    assert any(not torch.equal(first[n], full_state[n]) for n in full_state)


TWO_PROCESS_SCRIPT = """
import sys
from seganswer_cli.config import Stage1Config, load_config
from seganswer_cli.train.stage1 import train_stage1
cfg = load_config(Stage1Config, "stage1-tiny", {"data": [sys.argv[1]], "phase": "lora", "model": "tiny",
                  "max_steps": 3, "batch_size": int(sys.argv[3]), "optim.lr": 1e-3, "lora.dropout": 0.0})
train_stage1(cfg, sys.argv[2], quiet=True)
"""


@pytest.mark.slow
def test_two_process_data_parallel_equals_one_process(shapes_split, tmp_path):
    """Phase lora (DDP with unused SAM prompt-encoder parameters). LoRA dropout is off: its masks
    are drawn per process, so they cannot match between one and two processes."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun is not None
    data = f"shapes={shapes_split[0]}"
    script = tmp_path / "run.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", str(script), data,
                          str(tmp_path / "two"), "1"], capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), data, str(tmp_path / "one"), "2"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    assert runs.RunFolder(tmp_path / "two").read_settings()["processes"] == 2
    for a, b in zip(train_records(tmp_path / "one"), train_records(tmp_path / "two"), strict=True):
        for key in ("loss", "lm", "focal", "dice", "iou", "object_score", "grad_norm", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    one_state, two_state = final_trainable(tmp_path / "one"), final_trainable(tmp_path / "two")
    assert one_state.keys() == two_state.keys()
    # atol 5e-5: SAM 2.1's mask decoder runs a batch's images in one call (here both images in one
    # process, one image in each of two), so its matrix products sum in another order; three AdamW
    # steps, which divide by the root of tiny second moments, turn that into up to 2e-5 on a weight
    # whose gradient is near zero (measured: one element of conv_s1's 8192)
    for name in one_state:
        torch.testing.assert_close(one_state[name], two_state[name], atol=5e-5, rtol=1e-4)


def test_activation_checkpointing_recomputes_layers_and_keeps_gradients():
    """The switch makes each decoder layer run again in backward; loss and gradients stay the same."""
    from seganswer_cli.config import LoraSettings, Stage1Config
    from seganswer_cli.data import ShapesConfig, generate_samples
    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.train.stage1 import setup_trainable, stage1_inputs
    from seganswer_cli.train.stage_setup import enable_activation_checkpointing

    samples = list(generate_samples("refseg", 2, ShapesConfig(width=64, height=64, min_size=16, max_size=32)))
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = SegAnswerModel.from_preset("tiny")
        setup_trainable(model, Stage1Config(phase="lora", lora=LoraSettings(dropout=0.0)))
        if checkpointing:
            enable_activation_checkpointing(model.mllm)
        model.train()
        calls = []
        # a submodule of the layer: the checkpoint wraps the layer's forward, so its inner calls repeat
        model.mllm.model.language_model.layers[0].self_attn.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        out = model(*stage1_inputs(model, samples))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((len(calls), out.loss.detach(), grads))
    (plain_calls, plain_loss, plain_grads), (ckpt_calls, ckpt_loss, ckpt_grads) = results
    assert (plain_calls, ckpt_calls) == (1, 2)
    torch.testing.assert_close(ckpt_loss, plain_loss)
    assert plain_grads.keys() == ckpt_grads.keys() and any("lora_A" in n for n in plain_grads)
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-5, atol=1e-7)


def test_standin_trains_every_weight_then_stage1_freezes_sam_encoder(shapes_split, tmp_path):
    """The demo's stand-in pretraining (not a paper stage) trains everything, SAM's image encoder and
    the vision tower included, on segmentation and plain questions mixed; Stage 1 after it keeps
    SAM's image encoder frozen, as the paper does."""
    from seganswer_cli.data import ShapesConfig, write_synthetic
    from seganswer_cli.model import SegAnswerModel

    train, val = shapes_split
    write_synthetic(tmp_path / "qa", "vqa", 16, ShapesConfig(width=96, height=96, min_size=32, max_size=48,
                                                              min_objects=1, max_objects=2), seed=2)
    config = stage1_config(train, None, phase="standin", max_steps=3, data=[f"ref={train}", f"qa={tmp_path / 'qa'}"],
                           batch_size=4, standin_points=True)
    standin = train_stage1(config, tmp_path / "standin", quiet=True)
    assert runs.RunFolder(tmp_path / "standin").read_settings()["stage"] == "standin"
    assert all(r["points"] > 0 for r in train_records(tmp_path / "standin"))  # SAM's click-prompted masks train too
    before = SegAnswerModel.from_preset("tiny").state_dict()
    after = SegAnswerModel.from_pretrained(standin).state_dict()
    for prefix in ("mask_decoder.sam.vision_encoder.", "mllm.model.visual.", "mllm.model.language_model.",
                   "mask_decoder.sam.mask_decoder.", "projector."):
        names = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
        changed = [k for k in names if not torch.equal(before[k], after[k])]
        assert names and len(changed) > 0.5 * len(names), prefix

    # a shapes scene is asked about several of its shapes in one conversation, one mask per <|seg|>
    from seganswer_cli.data import open_dataset
    from seganswer_cli.train.stage1 import stage1_inputs

    model = SegAnswerModel.from_pretrained(standin)
    sample = next(s for s in open_dataset(train) if len(s.extra["target_ids"]) == 1
                  and len({shape["colour"] for shape in s.extra["scene"]["shapes"]}) == 2)
    (sequence,), _, (masks,) = stage1_inputs(model, [sample], extra_expressions=2)
    assert len(masks) == 2 and int((sequence.input_ids[sequence.target_mask] == model.token_ids.seg).sum()) == 2
    assert not np.array_equal(masks[0], masks[1]) and np.array_equal(masks[0], sample.mask.decode())
    # echo: the word after <|seg|> is the expression's, so the <|seg|> state must carry the expression
    from seganswer_cli.model.conversation import echo_response

    assert echo_response("the red star") == "It is <|seg|> red star."
    (sequence,), _, _ = stage1_inputs(model, [sample], echo=True)
    targets = model.tokenizer.decode(sequence.input_ids[sequence.target_mask])
    assert targets.startswith("It is <|seg|> " + sample.expression.removeprefix("the "))

    # a question either plainly answered or, with looks, the reasoning conversation through its region
    question = next(iter(open_dataset(tmp_path / "qa")))
    region = np.logical_or.reduce([m.decode() for m in question.region_masks])
    (plain,), _, (no_masks,) = stage1_inputs(model, [question], looks=0.0)
    assert no_masks == [] and model.token_ids.seg not in plain.input_ids.tolist() and len(plain.visuals) == 1
    for mode in ("mask", "bbox"):
        (look,), _, (look_masks,) = stage1_inputs(model, [question], looks=1.0, look_modes=(mode,))
        assert len(look_masks) == 1 and np.array_equal(look_masks[0], region)
        view, _ = model.second_look(question.image.load(), region, mode=mode)
        assert len(look.visuals) == 2 and look.visuals[1].length == view.num_tokens
        targets = model.tokenizer.decode(look.input_ids[look.target_mask])
        assert "<|seg|>" in targets and targets.endswith(f"<answer> {question.answer_letter or question.answer} </answer>.<|im_end|>")

    projector = train_stage1(stage1_config(train, None, phase="projector", model=str(standin), max_steps=2),
                             tmp_path / "projector", quiet=True)
    final = SegAnswerModel.from_pretrained(projector).state_dict()
    encoder = [k for k in after if k.startswith("mask_decoder.sam.vision_encoder.")]
    assert all(torch.equal(after[k], final[k]) for k in encoder)
    assert not torch.equal(after["projector.fc1.weight"], final["projector.fc1.weight"])


def test_points_phase_trains_sam_alone_from_clicks(shapes_split, tmp_path):
    """Phase ``points`` (the stand-in's promptable pretraining of SAM 2.1): only SAM's weights move,
    the loss is the click-prompted masks', and validation scores masks from one click on each target."""
    from seganswer_cli.data import open_dataset
    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.train.stage1 import validate

    train, val = shapes_split
    config = stage1_config(train, val, phase="points", max_steps=30, batch_size=4, eval_every=0, points_lr=3e-3)
    folder = train_stage1(config, tmp_path / "points", quiet=True)
    assert runs.RunFolder(tmp_path / "points").read_settings()["stage"] == "standin"
    records = train_records(tmp_path / "points")
    assert all(r["lm"] == 0.0 and r["focal"] > 0 for r in records)
    first, last = eval_records(tmp_path / "points")[0], eval_records(tmp_path / "points")[-1]
    losses = [r["loss"] for r in records]
    assert np.median(losses[-10:]) < 0.6 * np.median(losses[:5])  # SAM learns from its clicks
    assert first["prompt"] == last["prompt"] == "click" and first["step"] == 0 and last["step"] == 30
    before = SegAnswerModel.from_preset("tiny")
    after = SegAnswerModel.from_pretrained(folder)
    a, b = before.state_dict(), after.state_dict()
    moved = {k.split(".")[0] for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])}
    assert moved == {"mask_decoder"}
    again = validate(after, open_dataset(val).take(config.val_limit), config.val_batch_size, clicks=True)
    assert again == pytest.approx({k: last[k] for k in again})  # the saved model is the one validated


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="known: the tiny Stage 1 recipe (a random LLM, 80 LoRA steps) learns "
                   "salient-object masks that ignore the expression; the shapes recipe's stand-in pretraining is "
                   "what makes masks follow it (docs/shapes-experiment.md); passes once the tiny recipe grounds")
def test_masks_follow_the_expression(lora_run):
    """Two expressions naming different shapes of one image must give different masks."""
    from seganswer_cli.data import ShapesConfig
    from seganswer_cli.data.shapes_datasets import generate_samples
    from seganswer_cli.data.shapes_language import more_expressions
    from seganswer_cli.model import SegAnswerModel

    model = SegAnswerModel.from_pretrained(lora_run[1] / "model")
    config = ShapesConfig(width=96, height=96, min_size=32, max_size=64, min_objects=2, max_objects=2)
    same = total = 0
    for sample in generate_samples("refseg", 30, config, seed=7):
        other = more_expressions(sample.extra["scene"], 1, seed=1, exclude=sample.extra["target_ids"])
        if len(sample.extra["target_ids"]) != 1 or not other:
            continue
        image = sample.image.load()
        a, _, _ = model.segment(image, sample.expression)
        b, _, _ = model.segment(image, other[0][0])
        same += (a & b).sum() > 0.9 * max((a | b).sum(), 1)
        total += 1
    assert total >= 10 and same <= 0.2 * total, f"{same} of {total} images: one mask for both expressions"


def test_click_prompts_segment_through_sams_prompt_encoder():
    """``click_points`` picks a pixel inside each mask; SAM's point prompt decodes one mask per click
    and its losses reach SAM's prompt encoder (the stand-in's promptable pretraining)."""
    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.train.stage1 import click_points

    mask = np.zeros((40, 60), dtype=bool)
    mask[10:20, 30:45] = True
    other = np.zeros_like(mask)
    other[25:35, 5:15] = True
    rng = np.random.default_rng(0)
    clicks = click_points([[mask, other], [np.zeros_like(mask), mask], []], rng)
    assert len(clicks[0]) == 2 and clicks[1] == [] and clicks[2] == []
    (x0, y0), (x1, y1) = clicks[0]
    assert mask[int(y0), int(x0)] and other[int(y1), int(x1)]

    model = SegAnswerModel.from_preset("tiny")
    model.train()
    from PIL import Image

    image = Image.new("RGB", (60, 40))
    seq = stage1_sequence(model, model.global_view(image), "the red square")
    out = model([seq], [image], [[mask]])
    parts = model.point_prompt_losses(out.image_embeddings, out.mask_rows, [[mask]], [clicks[0][:1]])
    assert set(parts) == {"focal", "dice", "iou", "object_score"}
    sum(parts.values()).backward()
    grads = [p.grad for p in model.mask_decoder.sam.prompt_encoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_sam_lr_is_the_learning_rate_of_sams_parameters(shapes_split, tmp_path):
    """``sam_lr`` gives SAM 2.1's trainable parameters their own learning rate (the demo's stand-in
    needs a lower one than its language model); the rest keep the phase's."""
    from seganswer_cli.config import Stage1Config
    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.train.stage1 import param_groups, setup_trainable

    model = SegAnswerModel.from_preset("tiny")
    setup_trainable(model, Stage1Config(phase="standin"))
    assert len(param_groups(model, Stage1Config(phase="standin"))) == 1
    rest, sam = param_groups(model, Stage1Config(phase="standin", sam_lr=1e-4))
    assert sam["lr"] == 1e-4 and "lr" not in rest
    assert {id(p) for p in sam["params"]} == {id(p) for p in model.mask_decoder.parameters()}
    assert len(rest["params"]) + len(sam["params"]) == len([p for p in model.parameters() if p.requires_grad])

    train, _ = shapes_split
    config = stage1_config(train, None, phase="standin", max_steps=2, batch_size=2, sam_lr=1e-30)
    after = SegAnswerModel.from_pretrained(train_stage1(config, tmp_path / "run", quiet=True)).state_dict()
    before = SegAnswerModel.from_preset("tiny").state_dict()
    changed = {k for k in before if before[k].is_floating_point()  # zero-initialised biases move by ~1e-30
               and not torch.allclose(before[k], after[k], rtol=0, atol=1e-20)}
    assert not any(k.startswith("mask_decoder.") for k in changed)
    assert any(k.startswith("mllm.model.language_model.") for k in changed) and any(k.startswith("projector.") for k in changed)
