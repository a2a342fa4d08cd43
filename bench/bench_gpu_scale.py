"""The paper-sized model on a GPU, without its weights: Qwen2.5-VL-7B and SAM 2.1 Hiera-Large
architectures at full size with random bf16 weights (the tokenizer is the tiny one; only the
vocabulary *rows* are the real 152,064).

Run where CUDA is present: ``python bench/bench_gpu_scale.py [--out DIR]``. It checks and measures:

1. correctness on the device: the tiny model's logits, masks and greedy reasoning tokens on CUDA
   equal the CPU's (fp32);
2. at 7B scale (bf16): global view + Stage 1 segmentation latency, the reasoning loop's prefill and
   decode speed, the second turn fed on the KV cache vs re-prefilled (a ratio), the second look's
   tokens in ``mask`` vs ``bbox`` mode on a 1024x768 image;
3. one Stage 1 LoRA-phase training step (peft LoRA r=8 on the language model, projector and SAM
   decoder trainable, gradient checkpointing on vs off): step time and peak memory.

Writes ``bench/results/gpu_scale.json`` (and ``--out``). ``--small`` runs the same code on tiny
configs on the CPU (a smoke test of this script).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from seganswer_cli.model import SegAnswerModel
from seganswer_cli.model.conversation import reasoning_sequence, stage1_sequence
from seganswer_cli.model.mask_decoder import SamMaskDecoder
from seganswer_cli.model.mllm import add_seg_token, build_tiny_processor
from seganswer_cli.model.projector import SegProjector
from seganswer_cli.reasoning import ReasoningLoop, ReasoningSettings

RESULTS = Path(__file__).parent / "results" / "gpu_scale.json"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats=3):
    times, out = [], None
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def scene(width=1024, height=768, seed=0):
    rng = np.random.RandomState(seed)
    img = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y, r = rng.randint(40, width - 40), rng.randint(40, height - 40), rng.randint(10, 60)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.randint(0, 255, 3)))
    yy, xx = np.mgrid[:height, :width]
    mask = ((yy - 300) ** 2 + (xx - 620) ** 2 < 40**2) | ((np.abs(yy - 520) < 8) & (np.abs(xx - 300) < 90))
    return img, mask


def paper_sized(small: bool, device, dtype):
    """Qwen2.5-VL-7B and SAM 2.1 Hiera-Large configs (published sizes), random weights."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    from seganswer_cli.model import tokens

    processor = build_tiny_processor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * (64 if small else 1280))
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in tokens.QWEN_SPECIAL_TOKENS}
    text = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]})
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
    if small:
        text.update(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
        vision.update(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1])
    config = Qwen2_5_VLConfig(text_config=dict(text, tie_word_embeddings=False), vision_config=vision,
                              image_token_id=ids[tokens.IMAGE_PAD], video_token_id=ids[tokens.VIDEO_PAD],
                              vision_start_token_id=ids[tokens.VISION_START], vision_end_token_id=ids[tokens.VISION_END],
                              tie_word_embeddings=False)
    if small:
        sam_config = Sam2Config(
            vision_config=Sam2VisionConfig(
                backbone_config=Sam2HieraDetConfig(hidden_size=16, image_size=[128, 128], blocks_per_stage=[1, 1, 2, 1],
                                                   embed_dim_per_stage=[16, 32, 64, 128],
                                                   num_attention_heads_per_stage=[1, 1, 1, 1], global_attention_blocks=[3]),
                backbone_channel_list=[128, 64, 32, 16], backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=256),
            prompt_encoder_config=Sam2PromptEncoderConfig(image_size=128), mask_decoder_config=Sam2MaskDecoderConfig(mlp_dim=256))
    else:
        backbone = Sam2HieraDetConfig(hidden_size=144, embed_dim_per_stage=[144, 288, 576, 1152],
                                      num_attention_heads_per_stage=[2, 4, 8, 16], blocks_per_stage=[2, 6, 36, 4],
                                      global_attention_blocks=[23, 33, 43], window_positional_embedding_background_size=[7, 7],
                                      window_size_per_stage=[8, 4, 16, 8])
        sam_config = Sam2Config(vision_config=Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[1152, 576, 288, 144]),
                                prompt_encoder_config=Sam2PromptEncoderConfig(), mask_decoder_config=Sam2MaskDecoderConfig())
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            mllm = Qwen2_5_VLForConditionalGeneration(config).eval()
            sam = Sam2Model(sam_config).eval()
            projector = SegProjector(config.text_config.hidden_size, 256)
    finally:
        torch.set_default_dtype(previous)
    add_seg_token(mllm, processor)
    info = {"preset": "paper-sized-random", "view": {"zoom": True}}
    return SegAnswerModel(mllm, processor, projector, SamMaskDecoder(sam), info).eval()


def device_equivalence() -> dict:
    """The tiny model on CUDA (fp32) gives the CPU's logits, masks and greedy tokens."""
    img, mask = scene(480, 360)
    cpu = SegAnswerModel.from_preset("tiny")
    gpu = SegAnswerModel.from_preset("tiny").to("cuda")
    seq = stage1_sequence(cpu, cpu.global_view(img), "the disc")
    with torch.no_grad():
        a, b = cpu([seq], [img], [[mask]]), gpu([seq], [img], [[mask]])
    logit_diff = float((a.hidden_states - b.hidden_states.cpu()).abs().max())
    mask_cpu, _, _ = cpu.segment(img, "the disc")
    mask_gpu, _, _ = gpu.segment(img, "the disc")
    settings = ReasoningSettings(max_new_tokens=24)
    t_cpu = ReasoningLoop(cpu, settings).run([img], ["What colour is the disc?"])[0]
    t_gpu = ReasoningLoop(gpu, settings).run([img], ["What colour is the disc?"])[0]
    return {"hidden_max_abs_diff": logit_diff, "mask_pixels_differing": int((mask_cpu != mask_gpu).sum()),
            "greedy_tokens_equal": bool(torch.equal(t_cpu.sequence.input_ids, t_gpu.sequence.input_ids)),
            "loss_cpu": a.loss.item(), "loss_gpu": b.loss.item()}


def at_scale(model, device) -> dict:
    img, mask = scene()
    out: dict = {}
    out["global_view_tokens"] = model.global_view(img).num_tokens
    view = model.segmented_view(img, mask)
    bbox = model.segmented_view(img, mask, mode="bbox")
    out["second_look_tokens"] = {"mask": view.num_tokens, "bbox": bbox.num_tokens, "crop_cells": view.crop.num_tokens}
    seconds, _ = timed(lambda: model.segment_batch([img, img], ["the disc", "the bar"]))
    out["segment_batch2_s"] = seconds
    loop = ReasoningLoop(model, ReasoningSettings(max_new_tokens=32))
    seconds, trajs = timed(lambda: loop.run([img], ["What colour is the disc?"]), repeats=2)
    t = trajs[0]
    out["loop_1q"] = {"total_s": seconds, "prefill_s": t.timings["prefill"], "decode_s": t.timings["decode"],
                      "generated": t.generated_tokens,
                      "decode_tokens_per_s": (t.generated_tokens - 1) / max(t.timings["decode"], 1e-9)}
    seconds, trajs = timed(lambda: loop.run([img] * 8, ["What colour is the disc?"] * 8), repeats=1)
    out["loop_8q_batched_s_per_q"] = seconds / 8
    # Second turn on the cache vs the whole conversation re-prefilled.
    seq = reasoning_sequence(model, model.global_view(img), "What colour is the disc?", "red", view=view)
    start = seq.visuals[1].start - 6
    with torch.no_grad():
        prefix = model.collate([seq])
        prefix.input_ids, prefix.position_ids = prefix.input_ids[:, :start], prefix.position_ids[:, :, :start]
        prefix.attention_mask, prefix.labels = prefix.attention_mask[:, :start], prefix.labels[:, :start]
        prefix.visuals = [[v for v in prefix.visuals[0] if v.start < start]]
        cache_out = model.language_model(model.embed(prefix), prefix.position_ids, prefix.attention_mask, use_cache=True)
        turn = model.collate([seq.tail(start)])
        whole = model.collate([seq])
        import copy

        def cached():
            c = copy.deepcopy(cache_out.cache)
            mask2 = torch.cat([prefix.attention_mask, turn.attention_mask], 1)
            return model.language_model(model.embed(turn), turn.position_ids, mask2, cache=c, use_cache=True)

        c_s, _ = timed(cached)
        f_s, _ = timed(lambda: model.language_model(model.embed(whole), whole.position_ids, whole.attention_mask))
    out["second_turn"] = {"cached_s": c_s, "reprefill_s": f_s, "reprefill_over_cached": f_s / c_s,
                          "prefix_tokens": start, "turn_tokens": len(seq) - start}
    return out


def train_step(model, checkpointing: bool) -> dict:
    from peft import LoraConfig, get_peft_model

    img, mask = scene()
    if not hasattr(model.mllm, "peft_config"):
        get_peft_model(model.mllm, LoraConfig(r=8, lora_alpha=16, target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"))
    model.train()
    model.projector.requires_grad_(True)
    model.mask_decoder.sam.mask_decoder.requires_grad_(True)
    # transformers >= 5.24 calls it activation checkpointing (the old names warn).
    if checkpointing:
        model.mllm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.mllm.enable_input_require_grads()
    else:
        model.mllm.activation_checkpointing_disable()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5)
    seqs = [stage1_sequence(model, model.global_view(img), e) for e in ("the disc", "the bar")]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def step():
        out = model(seqs, [img, img], [[mask], [mask]])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        return out.loss.item()

    seconds, loss = timed(step)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    model.eval()
    return {"checkpointing": checkpointing, "step_s": seconds, "peak_gib": peak, "loss": loss,
            "trainable_params": sum(p.numel() for p in params), "sequence_tokens": len(seqs[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny configs on the CPU (smoke test)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.small:
        raise SystemExit("no CUDA device: run with --small for a CPU smoke test")
    device = torch.device("cuda" if cuda and not args.small else "cpu")
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__}
    import transformers

    results["transformers"] = transformers.__version__
    if device.type == "cuda":
        results["device_equivalence"] = device_equivalence()
        print(json.dumps(results["device_equivalence"]), flush=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = paper_sized(args.small, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    results["build_s"] = time.perf_counter() - t0
    results["parameters"] = {"mllm": sum(p.numel() for p in model.mllm.parameters()),
                             "sam": sum(p.numel() for p in model.mask_decoder.sam.parameters())}
    print(json.dumps(results["parameters"]), flush=True)
    results["inference"] = at_scale(model, device)
    print(json.dumps(results["inference"]), flush=True)
    results["train"] = [train_step(model, checkpointing=True), train_step(model, checkpointing=False)]
    print(json.dumps(results["train"]), flush=True)
    text = json.dumps(results, indent=2) + "\n"
    if not args.small:
        RESULTS.write_text(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_scale.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
