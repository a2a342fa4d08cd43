"""The reasoning loop's cost: where a question's time goes, what the KV cache saves, and how many
visual tokens the second look costs in ``mask`` vs ``bbox`` mode.

Run: ``.venv/bin/python bench/bench_reasoning.py [--n 16]``. Prints tables and writes
``bench/results/reasoning.json``. On the tiny model (CPU) by default; ``--model DIR`` for another.

1. Latency split per question (turn-1 prefill, decoding, mask decode, segmented turn, total),
   averaged over shapes-world questions, one by one and batched.
2. Cached vs re-prefilled second turn: feeding only the segmented turn on top of the KV cache vs
   prefilling the whole conversation again (original image re-encoded), as a ratio.
3. Kept visual tokens of the second look, ``mask`` vs ``bbox``, on the same ground-truth regions.

The tiny model's weights are random, so before (1) and (2) it is taught the paper's Stage 2
pattern on a few conversations (a few seconds), so that it emits ``<|seg|>`` and the seg path runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from seganswer_cli.data import ShapesConfig, generate_samples
from seganswer_cli.model import SegAnswerModel
from seganswer_cli.model.conversation import reasoning_sequence
from seganswer_cli.reasoning import ReasoningLoop, ReasoningSettings

RESULTS = Path(__file__).parent / "results" / "reasoning.json"
CONFIG = ShapesConfig(width=768, height=576, min_size=24, max_size=160, target_min_size=24, target_max_size=48,
                      clutter=40, multiple_choice=1.0)


def shapes_questions(n: int, seed: int):
    out = []
    for s in generate_samples("vqa", n, CONFIG, seed=seed):
        mask = np.zeros((CONFIG.height, CONFIG.width), bool)
        for m in s.region_masks:
            mask |= m.decode()
        out.append((s.image.load(), s.question, mask, s.answer))
    return out


def teach_pattern(model, cases, steps: int = 60) -> None:
    """Overfit the Stage 2 conversation on ``cases`` so the random tiny model emits ``<|seg|>``."""
    model.train()
    seqs = [reasoning_sequence(model, model.global_view(img), q, a, view=model.segmented_view(img, m))
            for img, q, m, a in cases]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(steps):
        loss = model(seqs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def latency_split(model, cases, batch_size: int) -> dict:
    loop = ReasoningLoop(model, ReasoningSettings(max_new_tokens=64))
    trajs = []
    start = time.perf_counter()
    for i in range(0, len(cases), batch_size):
        chunk = cases[i : i + batch_size]
        trajs += loop.run([c[0] for c in chunk], [c[1] for c in chunk])
    wall = time.perf_counter() - start
    phases = ("prefill", "decode", "mask", "segmented_turn", "total")
    row = {p: statistics.mean(t.timings[p] for t in trajs) for p in phases}
    row.update(batch_size=batch_size, questions=len(trajs), wall_per_question=wall / len(trajs),
               segmented=sum(bool(t.steps) for t in trajs),
               generated_tokens=statistics.mean(t.generated_tokens for t in trajs))
    return row, trajs


@torch.no_grad()
def cached_vs_reprefill(model, trajs, repeats: int = 3) -> dict:
    """Per trajectory with a second look: time to feed the segmented turn on a cache vs from scratch."""
    cached, fresh = [], []
    for traj in trajs:
        seq = traj.sequence
        if len(seq.visuals) < 2:
            continue
        start = seq.visuals[1].start - 6  # the turn opens with "\n<|im_start|>user\n<|vision_start|>"
        while start > 0 and seq.target_mask[start]:
            start += 1
        end = int(torch.nonzero(~seq.target_mask[start:]).flatten()[-1]) + start + 1  # end of the user turn
        prefix = model.collate([seq.tail(0)])
        prefix.input_ids, prefix.position_ids = prefix.input_ids[:, :start], prefix.position_ids[:, :, :start]
        prefix.attention_mask, prefix.labels = prefix.attention_mask[:, :start], prefix.labels[:, :start]
        prefix.visuals = [[v for v in prefix.visuals[0] if v.start < start]]
        turn = model.collate([_cut(seq, start, end)])
        whole = model.collate([_cut(seq, 0, end)])
        for _ in range(repeats):
            out = model.language_model(model.embed(prefix), prefix.position_ids, prefix.attention_mask, use_cache=True)
            t0 = time.perf_counter()
            mask = torch.cat([prefix.attention_mask, turn.attention_mask], 1)
            model.language_model(model.embed(turn), turn.position_ids, mask, cache=out.cache, use_cache=True)
            cached.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.language_model(model.embed(whole), whole.position_ids, whole.attention_mask)
            fresh.append(time.perf_counter() - t0)
    if not cached:
        return {}
    c, f = statistics.median(cached), statistics.median(fresh)
    return {"cached_turn_s": c, "reprefill_s": f, "reprefill_over_cached": f / c, "samples": len(cached) // repeats}


def _cut(seq, start: int, end: int):
    part = seq.tail(start)
    n = end - start
    part.input_ids, part.position_ids, part.target_mask = part.input_ids[:n], part.position_ids[:, :n], part.target_mask[:n]
    part.visuals = [v for v in part.visuals if v.start < n]
    return part


def kept_tokens(model, cases) -> dict:
    mask_tokens, bbox_tokens, dense_tokens = [], [], []
    for img, _, m, _ in cases:
        mask_tokens.append(model.segmented_view(img, m, mode="mask").num_tokens)
        bbox_tokens.append(model.segmented_view(img, m, mode="bbox").num_tokens)
        dense_tokens.append(model.global_view(img).num_tokens)
    return {"mask_mean": statistics.mean(mask_tokens), "bbox_mean": statistics.mean(bbox_tokens),
            "global_view_mean": statistics.mean(dense_tokens),
            "mask_over_bbox": statistics.mean(mask_tokens) / statistics.mean(bbox_tokens), "samples": len(cases)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args()
    torch.manual_seed(0)
    console = Console()
    model = SegAnswerModel.from_pretrained(args.model)
    cases = shapes_questions(args.n, seed=123)
    if args.model == "tiny":
        teach_pattern(model, cases[:4])

    splits, trajs = [], []
    for bs in (1, 4):
        row, t = latency_split(model, cases, bs)
        splits.append(row)
        trajs = trajs or t
    cache = cached_vs_reprefill(model, trajs)
    tokens = kept_tokens(model, cases)

    table = Table(title=f"reasoning loop, {args.model}, {len(cases)} shapes-world questions ({CONFIG.width}x{CONFIG.height})")
    for col in ("batch", "prefill s", "decode s", "mask s", "seg turn s", "total s", "wall s/q", "segmented"):
        table.add_column(col, justify="right")
    for r in splits:
        table.add_row(str(r["batch_size"]), *(f"{r[k]:.4f}" for k in ("prefill", "decode", "mask", "segmented_turn", "total", "wall_per_question")),
                      f"{r['segmented']}/{r['questions']}")
    console.print(table)
    if cache:
        console.print(f"second turn: cached {cache['cached_turn_s'] * 1e3:.2f} ms vs re-prefilled "
                      f"{cache['reprefill_s'] * 1e3:.2f} ms -> re-prefill costs {cache['reprefill_over_cached']:.2f}x")
    console.print(f"second-look visual tokens: mask {tokens['mask_mean']:.1f} vs bbox {tokens['bbox_mean']:.1f} "
                  f"(mask/bbox {tokens['mask_over_bbox']:.2f}); global view {tokens['global_view_mean']:.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.platform(), "torch": torch.__version__, "model": args.model,
                                   "device": "cpu", "latency": splits, "cache": cache, "kept_tokens": tokens}, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
