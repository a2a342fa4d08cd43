"""Stage 3 (DAPO) throughput on the tiny model: rollouts and updates.

Run: ``.venv/bin/python bench/bench_stage3.py [--steps 4]``. Prints a summary and writes
``bench/results/stage3.json``. The starting model is a tiny stand-in Stage 2 model (two
conversations overfitted until it emits ``observe <|seg|>.`` -> segmented view -> ``<answer>``, the
recipe of the tests' ``patterned_model``), so rollouts take the segmented turn for real; the prompts
are shapes-world RL questions (96 px). It runs ``train_stage3`` with the ``stage3-tiny`` recipe and
reads the per-step timings from the run's ``metrics.jsonl``:

* rollout throughput: trajectories/s and generated tokens/s (all rollouts of a step, refills included);
* update time per step (the training forwards, backward and optimizer steps);
* the share of a step spent in rollouts.

The first step is reported apart (warm-up: allocations, first image encodes) and left out of the means.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from seganswer_cli.model.conversation import reasoning_sequence

RESULTS = Path(__file__).parent / "results" / "stage3.json"


def stand_in_stage2_model(folder: Path) -> Path:
    from seganswer_cli.model import SegAnswerModel

    torch.manual_seed(0)
    model = SegAnswerModel.from_preset("tiny").train()
    sequences = []
    for seed, question, box, answer in [(0, "What colour is the disc?", (40, 100, 60, 150), "red"),
                                         (1, "Which shape is on the left?", (90, 160, 20, 80), "square")]:
        image = Image.fromarray((np.random.RandomState(seed).rand(180, 240, 3) * 255).astype(np.uint8))
        mask = np.zeros((180, 240), bool)
        mask[box[0] : box[1], box[2] : box[3]] = True
        sequences.append(reasoning_sequence(model, model.global_view(image), question, answer,
                                               view=model.segmented_view(image, mask)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(120):
        loss = model(sequences).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy the run folder here (for `seganswer plot`); not kept by default")
    args = parser.parse_args()

    from seganswer_cli.config import Stage3Config, load_config
    from seganswer_cli.data import ShapesConfig, write_synthetic
    from seganswer_cli.train.runs import MetricsLog
    from seganswer_cli.train.stage3 import train_stage3

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = stand_in_stage2_model(root / "stage2")
        shapes = ShapesConfig(width=96, height=96, min_size=24, max_size=48, min_objects=1, max_objects=2,
                              colours=("red", "blue"), kinds=("circle", "square"))
        write_synthetic(root / "rl", "rl", 64, shapes, seed=0)
        config = load_config(Stage3Config, "stage3-tiny", {
            "model": str(model_dir), "data": [f"shapes={root / 'rl'}"], "max_steps": args.steps,
            "prompts_per_step": args.prompts_per_step})
        started = time.perf_counter()
        train_stage3(config, root / "run", quiet=True)
        wall = time.perf_counter() - started
        records = [r for r in MetricsLog(root / "run" / "metrics.jsonl").read() if r["kind"] == "train"]
        if args.keep is not None:
            import shutil

            shutil.copytree(root / "run", args.keep, ignore=shutil.ignore_patterns("checkpoints", "model"))

    def per_step(r):
        trajectories = r["groups_sampled"] * config.rollouts_per_prompt
        return {"step": r["step"], "trajectories": trajectories,
                "generated_tokens": round(r["generated_tokens"] * trajectories),
                "rollout_seconds": round(r["rollout_seconds"], 3), "update_seconds": round(r["update_seconds"], 3),
                "trajectories_per_s": round(trajectories / r["rollout_seconds"], 2),
                "generated_tokens_per_s": round(r["generated_tokens"] * trajectories / r["rollout_seconds"], 1),
                "rollout_share": round(r["rollout_seconds"] / (r["rollout_seconds"] + r["update_seconds"]), 3),
                "segment_rate": round(r["segment_rate"], 3), "reward": round(r["reward"], 3)}

    steps = [per_step(r) for r in records]
    measured = steps[1:] or steps
    summary = {key: round(float(np.mean([s[key] for s in measured])), 3)
               for key in ("trajectories_per_s", "generated_tokens_per_s", "rollout_seconds", "update_seconds",
                           "rollout_share")}
    result = {
        "what": "train_stage3, stage3-tiny recipe, stand-in Stage 2 tiny model, shapes-world RL prompts (96 px)",
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "settings": {"steps": args.steps, "prompts_per_step": args.prompts_per_step,
                     "rollouts_per_prompt": config.rollouts_per_prompt, "rollout_batch_size": config.rollout_batch_size,
                     "max_new_tokens": config.max_new_tokens},
        "mean_after_first_step": summary,
        "first_step": steps[0],
        "steps": steps,
        "wall_seconds": round(wall, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
