"""Stage 3 (DAPO) throughput on the tiny model: rollouts and updates, now and at an older commit.

Run: ``.venv/bin/python bench/bench_stage3.py [--steps 4] [--baseline aecf3d3]``. Prints a summary and
writes ``bench/results/stage3.json``. The starting model is a tiny stand-in Stage 2 model (two
conversations overfitted until it emits ``observe <|seg|>.`` -> segmented view -> ``<answer>``, the
recipe of the tests' ``patterned_model``: ``_training.stand_in_stage2_model``), so rollouts take the
segmented turn for real; the prompts are shapes-world RL questions (96 px). Each measurement runs
``train_stage3`` with the ``stage3-tiny`` recipe in a process of its own and reads the per-step timings
from the run's ``metrics.jsonl``:

* rollout throughput: trajectories/s and generated tokens/s (all rollouts of a step, refills included);
* update time per step (the training forwards, backward and optimizer steps);
* the share of a step spent in rollouts.

The first step is reported apart (warm-up: allocations, first image encodes) and left out of the means.

``--baseline COMMIT`` runs the same measurement (same model folder, same prompts, same recipe) on the
library of ``COMMIT``, checked out in a temporary git worktree, and reports the ratio of the rollout
throughputs (now / then). The runs alternate ``--repeat`` times and each side's best mean is kept,
since the machine's other work moves timings. Sampling seeds differ between versions (rollouts sample
per row since streaming), so the two runs draw different trajectories from the same policy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "stage3.json"
REPO = Path(__file__).resolve().parent.parent
KEYS = ("trajectories_per_s", "generated_tokens_per_s", "rollout_seconds", "update_seconds", "rollout_share")


def measure(spec: dict) -> dict:
    """One ``train_stage3`` run as ``spec`` says (model, data, steps, prompts per step, run folder);
    per-step rows and their means after the first step. Uses only what every version has."""
    import numpy as np

    from seganswer_cli.config import Stage3Config, load_config
    from seganswer_cli.train.runs import MetricsLog
    from seganswer_cli.train.stage3 import train_stage3

    config = load_config(Stage3Config, "stage3-tiny", {
        "model": spec["model"], "data": [f"shapes={spec['data']}"], "max_steps": spec["steps"],
        "prompts_per_step": spec["prompts_per_step"]})
    started = time.perf_counter()
    train_stage3(config, Path(spec["out"]), quiet=True)
    wall = time.perf_counter() - started
    records = [r for r in MetricsLog(Path(spec["out"]) / "metrics.jsonl").read() if r["kind"] == "train"]

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
    return {
        "settings": {"steps": spec["steps"], "prompts_per_step": spec["prompts_per_step"],
                     "rollouts_per_prompt": config.rollouts_per_prompt,
                     "rollout_batch_size": config.rollout_batch_size, "max_new_tokens": config.max_new_tokens},
        "mean_after_first_step": {k: round(float(np.mean([s[k] for s in measured])), 3) for k in KEYS},
        "first_step": steps[0], "steps": steps, "wall_seconds": round(wall, 1),
    }


def run_worker(spec: dict, src: Path) -> dict:
    """``measure(spec)`` in a new process whose ``seganswer_cli`` is the one under ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the measurement with {src} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--baseline", default=None, metavar="COMMIT",
                        help="also measure the library of this commit (a temporary git worktree)")
    parser.add_argument("--repeat", type=int, default=1, help="alternating runs per side; the best mean is kept")
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy the (last) run folder of this checkout here (for `seganswer plot`)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(json.loads(args.worker))))
        return

    import torch
    from _training import stand_in_stage2_model

    from seganswer_cli.data import ShapesConfig, write_synthetic

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = stand_in_stage2_model(root / "stage2")
        shapes = ShapesConfig(width=96, height=96, min_size=24, max_size=48, min_objects=1, max_objects=2,
                              colours=("red", "blue"), kinds=("circle", "square"))
        write_synthetic(root / "rl", "rl", 64, shapes, seed=0)
        sides = {"current": (REPO / "src", git("rev-parse", "--short", "HEAD"))}
        if args.baseline is not None:
            commit = git("rev-parse", "--short", args.baseline)
            tree = root / "baseline"
            git("worktree", "add", "--detach", str(tree), commit)
            sides["baseline"] = (tree / "src", commit)
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        try:
            for r in range(args.repeat):
                for side, (src, _) in sides.items():
                    spec = {"model": str(model_dir), "data": str(root / "rl"), "steps": args.steps,
                            "prompts_per_step": args.prompts_per_step, "out": str(root / f"{side}-{r}")}
                    runs[side].append(run_worker(spec, src))
        finally:
            if "baseline" in sides:
                git("worktree", "remove", "--force", str(root / "baseline"))
        if args.keep is not None:
            import shutil

            shutil.copytree(root / f"current-{args.repeat - 1}", args.keep,
                            ignore=shutil.ignore_patterns("checkpoints", "model"))

    best = {side: max(found, key=lambda m: m["mean_after_first_step"]["trajectories_per_s"])
            for side, found in runs.items()}
    result = {
        "what": "train_stage3, stage3-tiny recipe, stand-in Stage 2 tiny model, shapes-world RL prompts (96 px)",
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                    "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}},
        "repeat": args.repeat,
        **{side: {"commit": sides[side][1], **best[side]} for side in sides},
    }
    print(f"{'':10} {'commit':>9} " + " ".join(f"{k:>22}" for k in KEYS))
    for side in sides:
        means = best[side]["mean_after_first_step"]
        print(f"{side:10} {sides[side][1]:>9} " + " ".join(f"{means[k]:>22}" for k in KEYS))
    if "baseline" in sides:
        now, then = (best[s]["mean_after_first_step"]["trajectories_per_s"] for s in ("current", "baseline"))
        result["ratio_trajectories_per_s_current_over_baseline"] = round(now / then, 2)
        print(f"rollout trajectories/s, now / {sides['baseline'][1]}: {now / then:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
