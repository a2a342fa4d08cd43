"""Stage 2 training throughput (samples/s), peak memory, and the cost of the no-grad pass 1.

Run: ``.venv/bin/python bench/bench_stage2.py [--steps 12]``. Prints a table and writes
``bench/results/stage2.json``. Each configuration trains in its own process (so its peak memory is
its own): the tiny recipe (``stage2-tiny``), batch 4, on shapes-world questions, starting from a
saved tiny model (``--allow-untrained-start``: throughput does not depend on what Stage 1 taught):

* ``--masks online`` (pass 1 every step, the paper's reading) vs ``--masks precomputed`` (masks made
  once before step 1): the samples/s ratio is what the extra no-grad pass costs;
* pass 1's own seconds per step (``pass1_s`` in metrics.jsonl: reading images, pass 1, SAM 2.1,
  building the segmented views; with precomputed masks only reading and building) and its share of
  the step;
* online with gradient checkpointing (peak-memory and samples/s ratios).

Peak memory is the process's peak resident set on CPU (model and libraries included) and
``torch.cuda.max_memory_allocated`` on CUDA. The 7B recipe needs CUDA and local weights of a Stage 1
model folder (``--model-7b``); otherwise the script says why it skipped it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _training import device_name, peak_memory, report, run_worker, train_records

RESULTS = Path(__file__).parent / "results" / "stage2.json"


def worker(spec: dict) -> dict:
    """Train one configuration; return its throughput, pass-1 cost and peak memory."""
    import torch

    from seganswer_cli.config import Stage2Config, load_config
    from seganswer_cli.train.stage2 import train_stage2

    cfg = load_config(Stage2Config, spec["config"], spec["overrides"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train_stage2(cfg, spec["out"], quiet=True)
    wall = time.perf_counter() - started
    records = train_records(spec["out"])
    timed = records[1:] or records  # step 1 warms up
    step_s = [spec["overrides"]["batch_size"] / r["samples_per_s"] for r in timed]
    return {
        "samples_per_s": statistics.median(r["samples_per_s"] for r in timed),
        "pass1_s_per_step": statistics.median(r["pass1_s"] for r in timed),
        "pass1_share_of_step": statistics.median(r["pass1_s"] / s for r, s in zip(timed, step_s)),
        **peak_memory(),
        "steps": len(records),
        "wall_s": wall,
        "final_loss": records[-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per tiny configuration")
    parser.add_argument("--steps-7b", type=int, default=3, help="optimizer steps of the 7B recipe")
    parser.add_argument("--model-7b", default=os.environ.get("SEGANSWER_STAGE1_7B"),
                        help="a 7B Stage 1 model folder (merged)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    from seganswer_cli.data import ShapesConfig, write_synthetic
    from seganswer_cli.model import SegAnswerModel

    cuda = torch.cuda.is_available()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shapes = ShapesConfig(width=96, height=96, min_size=24, max_size=48, min_objects=2, max_objects=3)
        write_synthetic(root / "vqa", "vqa", 64, shapes, seed=0)
        SegAnswerModel.from_preset("tiny").save_pretrained(root / "tiny")
        base = {"data": [f"shapes={root / 'vqa'}"], "model": str(root / "tiny"), "allow_untrained_start": True,
                "max_steps": args.steps, "save_every": 0, "batch_size": 4, "direct_share": 0.0}
        rows.append(run_worker(__file__, "tiny online", "stage2-tiny", {**base, "masks": "online"}, root))
        rows.append(run_worker(__file__, "tiny precomputed", "stage2-tiny", {**base, "masks": "precomputed"}, root))
        rows.append(run_worker(__file__, "tiny online + grad ckpt", "stage2-tiny",
                               {**base, "masks": "online", "gradient_checkpointing": True}, root))
        if not cuda:
            notes.append("7B recipe skipped: no CUDA device")
        elif not (args.model_7b and Path(args.model_7b).is_dir()):
            notes.append("7B recipe skipped: give a 7B Stage 1 model folder with --model-7b (or SEGANSWER_STAGE1_7B)")
        else:
            rows.append(run_worker(__file__, "7b online batch 1", "stage2-7b",
                                   {**base, "model": args.model_7b, "allow_untrained_start": False,
                                    "max_steps": args.steps_7b, "batch_size": 1, "grad_accum": 1}, root))

    by_name = {r["name"]: r for r in rows}
    online, pre, ckpt = by_name["tiny online"], by_name["tiny precomputed"], by_name["tiny online + grad ckpt"]
    ratios = {
        "throughput online / precomputed masks": online["samples_per_s"] / pre["samples_per_s"],
        "pass-1 seconds per step online / precomputed": online["pass1_s_per_step"] / max(pre["pass1_s_per_step"], 1e-9),
        "peak memory grad ckpt / none": ckpt["peak_memory_mb"] / online["peak_memory_mb"],
        "throughput grad ckpt / none": ckpt["samples_per_s"] / online["samples_per_s"],
    }
    report(f"Stage 2 training ({'CUDA: ' + device_name() if cuda else 'CPU'}), batch 4", {
        "samples/s": lambda r: f"{r['samples_per_s']:.2f}",
        "pass 1 s/step": lambda r: f"{r['pass1_s_per_step']:.3f}",
        "pass 1 share": lambda r: f"{r['pass1_share_of_step']:.0%}",
        "peak memory (MB)": lambda r: f"{r['peak_memory_mb']:.0f}",
        "final loss": lambda r: f"{r['final_loss']:.3f}",
    }, rows, ratios, notes, RESULTS, args.steps)


if __name__ == "__main__":
    main()
