"""Stage 2 on CPU: the tiny model, from a short Stage 1 run, on shapes-world questions.

- the training conversation of a sample (pass 1 mask, segmented view, tokens, 3-D positions) equals
  what the reasoning loop builds at inference;
- only the model's turns carry loss;
- projector and SAM 2.1 stay bit-identical, the MLLM changes (the vision tower too, unless frozen);
- a short run teaches the format (``<|seg|>`` then ``<answer>...</answer>``) and lifts shapes-vqa accuracy;
- an interrupted, resumed run equals an uninterrupted one (online and precomputed masks);
- bad samples are counted and skipped, never a crash.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stage1_helpers import assert_resume_refused, stage1_config

from seganswer_cli.config import Stage2Config, load_config
from seganswer_cli.data import ShapesConfig, VQASample, write_synthetic
from seganswer_cli.data.samples import ImageRef
from seganswer_cli.errors import UsageError
from seganswer_cli.model import tokens
from seganswer_cli.model.conversation import reasoning_sequence, seg_request
from seganswer_cli.model.sequence import IGNORE_INDEX
from seganswer_cli.train import runs
from seganswer_cli.train.stage2 import (
    Drawn,
    ProblemReport,
    build_example,
    draw_problem,
    prepare_examples,
    train_stage2,
    truncate_sequence,
)

SHAPES = ShapesConfig(width=96, height=96, min_size=24, max_size=48, min_objects=2, max_objects=3)
TIMING_KEYS = ("samples_per_s", "pass1_s")


def stage2_config(model_dir, data_dir, **overrides):
    return load_config(Stage2Config, "stage2-tiny", {"model": str(model_dir), "data": [f"shapes={data_dir}"], **overrides})


def train_records(run_dir):
    records = runs.MetricsLog(run_dir / "metrics.jsonl").read()
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records if r["kind"] == "train"]


def png_ref(image) -> ImageRef:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ImageRef(data=buffer.getvalue(), name="test.png")


@pytest.fixture(scope="module")
def vqa_split(tmp_path_factory):
    """128 training questions and 32 held-out ones (other seed) on 96 px canvases."""
    root = tmp_path_factory.mktemp("vqa")
    return write_synthetic(root / "train", "vqa", 128, SHAPES, seed=0), write_synthetic(root / "test", "vqa", 32, SHAPES, seed=7)


@pytest.fixture(scope="module")
def stage1_model(shapes_split, tmp_path_factory):
    """A short Stage 1 (projector 2 steps, then lora 8 steps): the model Stage 2 starts from."""
    from seganswer_cli.train.stage1 import train_stage1

    train, _ = shapes_split
    root = tmp_path_factory.mktemp("stage1-short")
    projector = train_stage1(stage1_config(train, phase="projector", max_steps=2), root / "projector", quiet=True)
    return train_stage1(stage1_config(train, phase="lora", model=str(projector), max_steps=8), root / "lora", quiet=True)


@pytest.fixture(scope="module")
def stage2_run(stage1_model, vqa_split, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("stage2") / "run"
    train_stage2(stage2_config(stage1_model, vqa_split[0], max_steps=220), run_dir, quiet=True)
    return run_dir


def test_shipped_stage2_configs():
    tiny, paper = load_config(Stage2Config, "stage2-tiny"), load_config(Stage2Config, "stage2-7b")
    assert (paper.optim.lr, paper.epochs, paper.freeze_vision, paper.masks) == (2e-6, 1.0, False, "online")
    assert paper.gradient_checkpointing and paper.mixed_precision == "bf16"
    assert tiny.optim.lr == 1e-3 and tiny.masks == "online" and 0 < tiny.direct_share < 0.5
    assert Stage2Config().optim.lr == 2e-6  # the paper's rate is the default


# ---------------------------------------------------------------------- the conversation


def test_training_sequence_equals_what_the_reasoning_loop_builds(patterned_model):
    from seganswer_cli.reasoning import ReasoningSettings, run

    model, cases = patterned_model
    image, question, _, answer = cases[0]
    sample = VQASample("q0", png_ref(image), question, answer, "test")
    drawn = Drawn(0, sample, question, answer, direct=False)
    report = ProblemReport(Counter(), show=False)
    (example,) = prepare_examples(model, [drawn], Stage2Config(model="x"), report)
    traj = run(model, image, question, ReasoningSettings(max_new_tokens=80))
    assert traj.answer == answer and len(traj.steps) == 1  # the loop segmented, then answered
    # pass 1 found the mask the loop found, from the model's own <|seg|>
    assert np.array_equal(example.mask, traj.steps[0].mask) and example.mask.any()
    seq, ref = example.sequence, traj.sequence
    n = len(ref)  # the loop stops right after </answer>; training goes on with "." and <|im_end|>
    assert len(seq) > n
    assert torch.equal(seq.input_ids[:n], ref.input_ids)
    assert torch.equal(seq.position_ids[:, :n], ref.position_ids)
    assert torch.equal(seq.target_mask[:n], ref.target_mask)
    assert [v.start for v in seq.visuals] == [v.start for v in ref.visuals]
    (_, seg_slot), (_, ref_slot) = seq.visuals, ref.visuals
    assert torch.equal(seg_slot.keep, ref_slot.keep) and seg_slot.keep.numel() == traj.steps[0].kept_tokens
    assert report.totals()["empty_mask"] == 0


def test_region_share_shows_the_annotated_region_without_pass_1(tiny_model, noise_image, monkeypatch):
    """``region_share``: the drawn samples' second look is their annotated region (mask, else box);
    pass 1 runs only for the others; the draw is seeded per position and skips samples without a region."""
    from seganswer_cli.data.samples import LazyMask
    from seganswer_cli.masks import encode_rle
    from seganswer_cli.train import stage2
    from seganswer_cli.train.stage2 import Draws, annotated_region

    h, w = noise_image.height, noise_image.width
    region = np.zeros((h, w), bool)
    region[20:60, 30:90] = True
    with_mask = VQASample("m", png_ref(noise_image), "What colour?", "red", "test",
                          region_masks=[LazyMask(rle=encode_rle(region))])
    with_box = VQASample("b", png_ref(noise_image), "What colour?", "red", "test", region_boxes=[(30.0, 20.0, 90.0, 60.0)])
    plain = VQASample("p", png_ref(noise_image), "What colour?", "red", "test")
    assert np.array_equal(annotated_region(with_mask, h, w), region)
    assert np.array_equal(annotated_region(with_box, h, w), region)

    passed_to_pass1 = []
    real = stage2.own_masks
    monkeypatch.setattr(stage2, "own_masks", lambda model, images, prefixes: passed_to_pass1.append(len(images))
                        or real(model, images, prefixes))
    drawn = [Drawn(0, with_mask, "What colour?", "red", direct=False, region=True),
             Drawn(1, with_box, "What colour?", "red", direct=False, region=True),
             Drawn(2, plain, "What colour?", "red", direct=False)]
    examples = prepare_examples(tiny_model, drawn, Stage2Config(model="x"), ProblemReport(Counter(), show=False))
    assert passed_to_pass1 == [1] and [e.region for e in examples] == [True, True, False]
    view, _ = tiny_model.second_look(noise_image, region)
    assert np.array_equal(examples[0].mask, region) and torch.equal(examples[1].sequence.visuals[1].keep, view.keep)

    config = Stage2Config(model="x", region_share=0.5, direct_share=0.0)
    draws = Draws(iter([with_mask, plain] * 50), config, start=0, report=ProblemReport(Counter(), show=False))
    taken = draws.take(100)
    looked = [d.region for d in taken if d.sample is with_mask]
    assert not any(d.region for d in taken if d.sample is plain) and 10 < sum(looked) < 40
    again = Draws(iter([with_mask, plain] * 50), config, start=0, report=ProblemReport(Counter(), show=False)).take(100)
    assert [d.region for d in again] == [d.region for d in taken]
    with pytest.raises(UsageError, match="region_share must be in"):
        Stage2Config(region_share=1.5)


def test_empty_mask_falls_back_as_the_loop_does(tiny_model, noise_image):
    sample = VQASample("q", png_ref(noise_image), "What colour?", "red", "test")
    drawn = Drawn(0, sample, "What colour?", "red", direct=False)
    empty = np.zeros((noise_image.height, noise_image.width), bool)
    example = build_example(tiny_model, drawn, noise_image, tiny_model.global_view(noise_image), empty)
    view, fallback = tiny_model.second_look(noise_image, empty)
    assert example.fallback == fallback == "empty_mask"
    assert int(example.sequence.visuals[1].keep.numel()) == view.num_tokens == tiny_model.global_view(noise_image).num_tokens


def test_only_the_models_turns_carry_loss(tiny_model, noise_image, blob_mask):
    model = tiny_model
    sample = VQASample("q", png_ref(noise_image), "Which shape?", "disc", "test")
    for direct in (False, True):
        drawn = Drawn(0, sample, "Which shape?", "disc", direct=direct)
        example = build_example(model, drawn, noise_image, model.global_view(noise_image), None if direct else blob_mask)
        seq = example.sequence
        target_text = model.tokenizer.decode(seq.input_ids[seq.target_mask])
        responses = [tokens.answer_response("disc")] if direct else [tokens.SEG_RESPONSE, tokens.answer_response("disc")]
        assert target_text == "".join(r + tokens.IM_END for r in responses)
        assert not seq.target_mask[seq.input_ids == model.token_ids.image_pad].any()  # image and region: no loss
        # the training loss is the mean CE over exactly those tokens
        with torch.no_grad():
            out = model([seq])
            batch = model.collate([seq])
            logits = model.logits(out.hidden_states[0, :-1])
        labels = batch.labels[0, 1:]
        assert int((labels != IGNORE_INDEX).sum()) == int(seq.target_mask[1:].sum())
        expected = torch.nn.functional.cross_entropy(logits[labels != IGNORE_INDEX], labels[labels != IGNORE_INDEX])
        torch.testing.assert_close(out.lm_loss, expected)


# ---------------------------------------------------------------------- a run


def test_frozen_parts_bit_identical_and_mllm_trained(stage1_model, stage2_run):
    from seganswer_cli.model import SegAnswerModel

    before, after = SegAnswerModel.from_pretrained(stage1_model), SegAnswerModel.from_pretrained(stage2_run / "model")
    for part in ("projector", "mask_decoder"):
        a, b = getattr(before, part).state_dict(), getattr(after, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    a, b = before.mllm.state_dict(), after.mllm.state_dict()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert len(changed) > 0.9 * len(a)
    assert any(k.startswith("model.visual.") for k in changed)  # the vision tower trains by default
    assert after.info["training"]["stage"] == "stage2"
    assert [h["stage"] for h in after.info["training_history"]] == ["stage1", "stage1", "stage2"]


def test_short_run_teaches_the_format_and_lifts_accuracy(stage1_model, stage2_run, vqa_split):
    from seganswer_cli.eval import get_benchmark
    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.reasoning import ReasoningLoop, ReasoningSettings

    spec = get_benchmark("shapes-vqa")
    items = spec.read(vqa_split[1]).items

    def evaluate(folder):
        model = SegAnswerModel.from_pretrained(folder)
        trajs = ReasoningLoop(model, ReasoningSettings(max_new_tokens=48)).run(
            [item.load_image() for item in items], [item.prompt for item in items])
        formatted = [bool(t.steps) and tokens.SEG_TOKEN in t.turns[0] and t.answer_source == "tag" for t in trajs]
        correct = [spec.score(t.text, item).correct for t, item in zip(trajs, items)]
        return sum(formatted) / len(items), sum(correct) / len(items)

    format_before, acc_before = evaluate(stage1_model)
    format_after, acc_after = evaluate(stage2_run / "model")
    print(f"\nshapes-vqa ({len(items)} held-out questions): format {format_before:.2f} -> {format_after:.2f}, "
          f"accuracy {acc_before:.3f} -> {acc_after:.3f}")
    # seeded, reference CPU: format 0.00 -> 1.00, accuracy 0.094 -> 0.219 (220 steps)
    assert format_before <= 0.1 and format_after >= 0.8
    assert acc_after > acc_before
    losses = [r["loss"] for r in train_records(stage2_run)]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_freeze_vision_keeps_the_vision_tower(stage1_model, vqa_split, tmp_path):
    from seganswer_cli.model import SegAnswerModel

    train_stage2(stage2_config(stage1_model, vqa_split[0], max_steps=2, freeze_vision=True), tmp_path / "run", quiet=True)
    a, b = SegAnswerModel.from_pretrained(stage1_model).mllm.state_dict(), SegAnswerModel.from_pretrained(tmp_path / "run" / "model").mllm.state_dict()
    visual = [k for k in a if k.startswith("model.visual.")]
    assert visual and all(torch.equal(a[k], b[k]) for k in visual)
    assert not all(torch.equal(a[k], b[k]) for k in a if k not in visual)


def test_seg_loss_trains_the_seg_state_towards_the_annotated_region(stage1_model, vqa_split, tmp_path):
    """``seg_loss``: pass 2 adds SAM 2.1's mask losses of the ``<|seg|>`` masks against the annotated
    regions; projector and SAM stay frozen, so the gradient moves the MLLM only (the same run without
    it ends with other MLLM weights)."""
    from seganswer_cli.data import open_dataset
    from seganswer_cli.model import SegAnswerModel

    eight = tmp_path / "eight"
    write_synthetic(eight, "vqa", 8, SHAPES, seed=3)
    for weight in (1.0, 0.0):
        config = stage2_config(stage1_model, eight, max_steps=3, batch_size=8, seg_loss=weight, direct_share=0.0)
        train_stage2(config, tmp_path / f"seg{weight:g}", quiet=True)
    assert all(r["seg"] > 0 for r in train_records(tmp_path / "seg1"))
    assert all("seg" not in r for r in train_records(tmp_path / "seg0"))
    before, after = SegAnswerModel.from_pretrained(stage1_model), SegAnswerModel.from_pretrained(tmp_path / "seg1" / "model")
    for part in ("projector", "mask_decoder"):
        a, b = getattr(before, part).state_dict(), getattr(after, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    without = SegAnswerModel.from_pretrained(tmp_path / "seg0" / "model").mllm.state_dict()
    assert any(not torch.equal(v, without[k]) for k, v in after.mllm.state_dict().items())

    # a row whose image is None trains its tokens only; seg_loss 0 is the LM loss alone
    sample = next(iter(open_dataset(eight)))
    image = sample.image.load()
    seq = reasoning_sequence(before, before.global_view(image), sample.question, sample.answer,
                                 view=before.second_look(image, sample.region(), mode="mask")[0])
    from seganswer_cli.train.stage2 import segmentation_weights

    with torch.no_grad():
        out = before([seq, seq], [image, None], [[sample.region()], []], weights=segmentation_weights(1.0))
        plain = before([seq, seq])
        zero = before([seq, seq], [image, None], [[sample.region()], []], weights=segmentation_weights(0.0))
    assert out.masks[0] is not None and out.masks[1] is None and out.loss > plain.loss
    torch.testing.assert_close(zero.loss, plain.loss)
    with pytest.raises(UsageError, match="seg_loss must be >= 0"):
        Stage2Config(seg_loss=-1)


def test_pass_two_reuses_pass_ones_sam_embeddings(noise_image, monkeypatch):
    """With ``seg_loss``, pass 2 decodes the ``<|seg|>`` masks on SAM's embeddings from pass 1 instead of
    running the frozen encoder again: the same loss and the same gradients as recomputing them."""
    from seganswer_cli.data.samples import LazyMask
    from seganswer_cli.masks import encode_rle
    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.train.stage2 import segmentation_weights

    model = SegAnswerModel.from_preset("tiny")
    model.projector.requires_grad_(False)  # Stage 2's frozen parts
    model.mask_decoder.requires_grad_(False)
    h, w = noise_image.height, noise_image.width
    region = np.zeros((h, w), bool)
    region[20:60, 30:90] = True
    sample = VQASample("m", png_ref(noise_image), "What colour?", "red", "test",
                       region_masks=[LazyMask(rle=encode_rle(region))])
    drawn = [Drawn(0, sample, "What colour?", "red", direct=False), Drawn(1, sample, "What shape?", "disc", direct=False)]
    examples = prepare_examples(model, drawn, Stage2Config(model="x", seg_loss=1.0), ProblemReport(Counter(), show=False))
    assert all(e.sam is not None and e.target is not None for e in examples)

    encoded = []
    real_encode = model.encode_for_masks
    monkeypatch.setattr(model, "encode_for_masks", lambda images: encoded.append(len(images)) or real_encode(images))
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(reuse: bool):
        model.zero_grad()
        out = model([e.sequence for e in examples], [e.image for e in examples], [[e.target] for e in examples],
                    weights=segmentation_weights(1.0), image_embeddings=[e.sam for e in examples] if reuse else None)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in params]

    reused, reused_grads = loss_and_grads(True)
    assert encoded == []  # the encoder did not run again
    recomputed, recomputed_grads = loss_and_grads(False)
    assert encoded == [2]
    torch.testing.assert_close(reused, recomputed, atol=1e-6, rtol=1e-6)
    for a, b in zip(reused_grads, recomputed_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("masks", ["online", "precomputed"])
def test_resume_after_kill_equals_uninterrupted_run(stage1_model, vqa_split, tmp_path, masks):
    cfg = stage2_config(stage1_model, vqa_split[0], max_steps=6, save_every=2, masks=masks, direct_share=0.3)
    train_stage2(cfg, tmp_path / "full", quiet=True)
    train_stage2(cfg, tmp_path / "killed", quiet=True, stop_after_step=3)  # checkpoint at 2, killed after 3
    assert not (tmp_path / "killed" / "model").exists()
    if masks == "online":  # a launch with another global batch is refused
        assert_resume_refused(train_stage2, cfg, tmp_path / "killed", "the run used a global batch of 16; this "
                              "launch gives 4 ", global_batch=16)
    train_stage2(cfg, tmp_path / "killed", resume=True, quiet=True)
    full = load_file(runs.RunFolder(tmp_path / "full").latest_checkpoint() / runs.TRAINABLE)
    resumed = load_file(runs.RunFolder(tmp_path / "killed").latest_checkpoint() / runs.TRAINABLE)
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert train_records(tmp_path / "full") == train_records(tmp_path / "killed")
    records = train_records(tmp_path / "full")
    assert sum(r["direct"] for r in records) > 0 and sum(r["direct"] for r in records) < sum(r["trained"] for r in records)
    cache = list((tmp_path / "full" / "masks").glob("masks-rank*.jsonl"))
    assert bool(cache) == (masks == "precomputed")
    if masks == "precomputed":
        assert len(cache[0].read_text().splitlines()) > 0
        assert all(r["pass1_s"] < 5 for r in runs.MetricsLog(tmp_path / "full" / "metrics.jsonl").read())


def test_mask_cache_cut_by_a_kill_is_repaired_not_appended_onto(vqa_split, tmp_path):
    """A kill mid-write leaves the cache's last line cut: the next start skips it, cuts it off and
    computes that mask again on a fresh line."""
    from accelerate import Accelerator

    from seganswer_cli.data import open_dataset
    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.train.stage2 import precompute_masks, read_mask_cache, sample_key

    model = SegAnswerModel.from_preset("tiny").eval()
    samples = open_dataset(vqa_split[0]).take(3)
    planned = [Drawn(i, s, s.question, s.answer, direct=False) for i, s in enumerate(samples)]
    cfg, accelerator, folder = Stage2Config(batch_size=2), Accelerator(cpu=True), tmp_path / "masks"
    first = precompute_masks(model, planned, folder, accelerator, cfg, resume=False, show=False)
    (path,) = folder.glob("masks-rank*.jsonl")
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    path.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed while writing the third
    assert set(read_mask_cache(folder)) == {sample_key(s) for s in samples[:2]}
    again = precompute_masks(model, planned, folder, accelerator, cfg, resume=False, show=False)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.read_text().endswith("\n") and len(records) == 3
    assert [r["key"] for r in records] == [sample_key(s) for s in samples]
    assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)


# ---------------------------------------------------------------------- bad input


def test_starting_model_must_be_a_stage1_output(vqa_split, tmp_path):
    from seganswer_cli.errors import ModelFolderError
    from seganswer_cli.model import SegAnswerModel

    SegAnswerModel.from_preset("tiny").save_pretrained(tmp_path / "fresh")
    with pytest.raises(ModelFolderError, match="not a Stage 1 output"):
        train_stage2(stage2_config(tmp_path / "fresh", vqa_split[0], max_steps=1), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ModelFolderError, match="preset"):
        train_stage2(stage2_config("tiny", vqa_split[0], max_steps=1), tmp_path / "run", quiet=True)
    out = train_stage2(stage2_config(tmp_path / "fresh", vqa_split[0], max_steps=1, allow_untrained_start=True),
                       tmp_path / "run", quiet=True)
    assert (out / "seganswer.json").is_file()


def test_bad_samples_are_counted_and_the_run_goes_on(stage1_model, tmp_path, capsys):
    """VisualCoT records with a missing image or an empty answer are left out by the reader (counted,
    reported); an empty answer the reader lets through is caught when drawn and replaced."""
    from seganswer_cli.data import generate_samples

    root = tmp_path / "visualcot"
    (root / "cot" / "gqa").mkdir(parents=True)
    lines = []
    for i, sample in enumerate(generate_samples("vqa", 10, SHAPES, seed=4)):
        name = f"{i}.png"
        if i != 0:  # record 0's image is missing
            sample.image.load().save(root / "cot" / "gqa" / name)
        answer = "" if i == 1 else sample.answer
        lines.append({"question": sample.question, "answer": answer, "image": name, "width": 96, "height": 96,
                      "bboxs": [[0, 0, 10, 10]], "dataset": "gqa", "split": "train"})
    (root / "metadata").mkdir()
    (root / "metadata" / "gqa_cot_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    model_dir = train_stage2(load_config(Stage2Config, "stage2-tiny", {
        "model": str(stage1_model), "data": [f"visualcot={root}"], "max_steps": 3, "direct_share": 0.0}), tmp_path / "run")
    err = capsys.readouterr().err
    assert "image not found" in err and "empty question or answer" in err
    assert "records skipped while reading: visualcot 2" in " ".join(err.split())
    settings = runs.RunFolder(tmp_path / "run").read_settings()
    assert settings["records_skipped_reading"] == {"visualcot": 2} and settings["dataset_size"] == 8
    assert all(r["trained"] == 4 for r in train_records(tmp_path / "run"))
    assert (model_dir / "seganswer.json").is_file()

    folder = write_synthetic(tmp_path / "data", "vqa", 12, SHAPES, seed=3)  # this reader lets an empty answer through
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    records[1].update(answer="  ", options=[], answer_letter=None, answer_type="text")
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    model_dir = train_stage2(stage2_config(stage1_model, folder, max_steps=4, direct_share=0.0), tmp_path / "run2")
    err = capsys.readouterr().err
    assert "empty answer; skipped" in err
    problems = json.loads((model_dir / "seganswer.json").read_text())["training"]["problems"]
    assert problems["empty_answer"] >= 1
    assert all(r["trained"] == 4 for r in train_records(tmp_path / "run2"))  # replaced by the next draws


@pytest.fixture(scope="module")
def same_question_split(tmp_path_factory):
    """Free-text questions all worded alike, so every Prompt 1 has the same length."""
    folder = write_synthetic(tmp_path_factory.mktemp("same") / "data", "vqa", 8, SHAPES, seed=5)
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    for r in records:
        r.update(question="What colour is the target?", answer="red", options=[], answer_letter=None, answer_type="text")
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.mark.parametrize("too_long", ["skip", "truncate"])
def test_too_long_conversations_are_skipped_or_truncated(stage1_model, same_question_split, tmp_path, too_long):
    from seganswer_cli.data import open_dataset
    from seganswer_cli.model import SegAnswerModel

    model = SegAnswerModel.from_pretrained(stage1_model)
    sample = open_dataset(same_question_split).take(1)[0]
    image = sample.image.load()
    dense = model.global_view(image)
    full = build_example(model, Drawn(0, sample, sample.question, "red", direct=False), image, dense,
                         np.ones((image.height, image.width), bool)).sequence
    limit = len(seg_request(model, dense, sample.question)) + 10  # Response 1 fits, the segmented region does not
    cut = truncate_sequence(full, limit)
    assert len(cut) < limit and len(cut.visuals) == 1  # cut before the region's <|vision_start|>
    assert int(full.input_ids[len(cut)]) == model.token_ids.vision_start
    assert model.tokenizer.decode(cut.input_ids[cut.target_mask]) == tokens.SEG_RESPONSE + tokens.IM_END
    assert truncate_sequence(full, int(torch.nonzero(full.target_mask)[0]) - 3) is None  # no model turn left
    run_dir = tmp_path / "run"
    train_stage2(stage2_config(stage1_model, same_question_split, max_steps=2, max_length=limit, too_long=too_long,
                               direct_share=0.0), run_dir, quiet=True)
    last = train_records(run_dir)[-1]
    if too_long == "skip":
        assert last["problems"]["too_long_skipped"] == 8 and last["trained"] == 0  # zero-loss steps, no crash
    else:
        assert last["problems"]["too_long_truncated"] == 8 and last["trained"] == 4
    assert (run_dir / "model" / "seganswer.json").is_file()


def test_draw_problem():
    image = ImageRef(data=b"x", name="x")
    assert draw_problem(VQASample("a", image, "Q?", "red", "t")) is None
    assert draw_problem(VQASample("a", image, "Q?", " ", "t"))[0] == "empty_answer"
    assert draw_problem(VQASample("a", image, "Q?", "red", "t", ["red", "blue"], None))[0] == "empty_answer"
    assert draw_problem(VQASample("a", ImageRef(path=Path("/nonexistent/x.png")), "Q?", "red", "t"))[0] == "missing_image"
