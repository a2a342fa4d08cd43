"""Continuous vs static batching in the reasoning loop, on a mix of short and long answers.

Run: ``.venv/bin/python bench/bench_batching.py [--n 32] [--long-share 0.25] [--batch-size 8]``. Prints
a table and writes ``bench/results/batching.json``.

The model is the tiny stand-in Stage 2 model (``_training.stand_in_stage2_model(long_answer=True)``):
on a plain image it answers at once (a few tokens); asked to describe its third noise image it asks
to segment, gets the segmented view and answers at length (~100 tokens over two turns). ``--n``
questions, ``--long-share`` of them long, in a seeded random order, are answered greedily,
``--batch-size`` at a time:

* static: ``ReasoningLoop.run`` on each consecutive group of ``--batch-size`` questions, the next group
  starting when the whole group is done (each group waits for its longest answer: what the loop did
  before rows were refilled);
* continuous: one ``ReasoningLoop.stream`` over all of them: a finished question leaves and the next
  one takes its slot at once, prefilled beside the others' decoding.

Both give the same trajectories (the bench counts them), so the ratio of their times is what refilling
buys. Each way runs ``--repeat`` times, alternating, and its best time is kept (shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _training import stand_in_stage2_model
from PIL import Image
from rich.console import Console
from rich.table import Table

from seganswer_cli.model import SegAnswerModel
from seganswer_cli.reasoning import Ask, ReasoningLoop, ReasoningSettings

RESULTS = Path(__file__).parent / "results" / "batching.json"
SHORT_QUESTIONS = ("Count.", "Describe the scene.", "Is there anything?")


def questions(n: int, long_share: float, seed: int) -> list[Ask]:
    """``n`` questions in a seeded random order: ``long_share`` of them the one the model answers at
    length (noise image 2, ~100 tokens after a segmented turn), the others on a plain image, which it
    answers at once (a few tokens)."""
    rng = random.Random(seed)
    n_long = round(n * long_share)
    noise = Image.fromarray((np.random.RandomState(2).rand(180, 240, 3) * 255).astype(np.uint8))
    plain = Image.new("RGB", (240, 180), (200, 30, 30))
    asks = [Ask(noise, "Describe the scene.") if i < n_long else Ask(plain, SHORT_QUESTIONS[i % len(SHORT_QUESTIONS)])
            for i in range(n)]
    rng.shuffle(asks)
    return asks


def static(loop: ReasoningLoop, asks: list[Ask], batch_size: int) -> list:
    out = []
    for start in range(0, len(asks), batch_size):
        group = asks[start : start + batch_size]
        out += loop.run([a.image for a in group], [a.question for a in group])
    return out


def continuous(loop: ReasoningLoop, asks: list[Ask], batch_size: int) -> list:
    done = dict(loop.stream(asks, batch_size))
    return [done[i] for i in range(len(asks))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--long-share", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        model = SegAnswerModel.from_pretrained(stand_in_stage2_model(Path(tmp) / "model", long_answer=True)).eval()
    loop = ReasoningLoop(model, ReasoningSettings(max_new_tokens=args.max_new_tokens))
    asks = questions(args.n, args.long_share, args.seed)
    continuous(loop, asks[: args.batch_size], args.batch_size)  # warm-up: lazy imports, allocator growth
    times: dict[str, list[float]] = {"static": [], "continuous": []}
    results = {}
    for _ in range(args.repeat):
        for name, way in (("static", static), ("continuous", continuous)):
            start = time.perf_counter()
            results[name] = way(loop, asks, args.batch_size)
            times[name].append(time.perf_counter() - start)
    lengths = [t.generated_tokens for t in results["static"]]
    identical = sum(torch.equal(a.sequence.input_ids, b.sequence.input_ids)
                    for a, b in zip(results["static"], results["continuous"], strict=True))
    rows = []
    for name in ("static", "continuous"):
        seconds = min(times[name])
        rows.append({"batching": name, "seconds": round(seconds, 3),
                     "trajectories_per_s": round(args.n / seconds, 2),
                     "generated_tokens_per_s": round(sum(lengths) / seconds, 1)})
    ratio = rows[0]["seconds"] / rows[1]["seconds"]

    table = Table(title=f"reasoning loop batching ({args.n} questions, {args.long_share:.0%} long answers, "
                  f"batch {args.batch_size}, tiny model, cpu)")
    for column in ("batching", "seconds", "trajectories/s", "generated tokens/s"):
        table.add_column(column, justify="left" if column == "batching" else "right")
    for row in rows:
        table.add_row(row["batching"], f"{row['seconds']:.2f}", f"{row['trajectories_per_s']:.1f}",
                      f"{row['generated_tokens_per_s']:.0f}")
    console = Console()
    console.print(table)
    console.print(f"continuous / static: {ratio:.2f}x; identical trajectories {identical}/{args.n}; "
                  f"answer lengths {min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.1f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "settings": vars(args), "answer_tokens": {"min": min(lengths), "max": max(lengths), "mean": float(np.mean(lengths))},
        "results": rows, "ratio_continuous_over_static": round(ratio, 2), "identical_trajectories": identical,
    }, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
