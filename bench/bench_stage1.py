"""Stage 1 training throughput (samples/s) and peak memory.

Run: ``.venv/bin/python bench/bench_stage1.py [--steps 8]``. Prints a table and writes
``bench/results/stage1.json``. Each configuration trains in its own process (so its peak memory is
its own): the tiny recipe, phase ``lora`` (the heavier phase), on the shapes world:

* batch 1 vs batch 4 (samples/s ratio: what batching buys);
* batch 4 with vs without gradient checkpointing (peak-memory and samples/s ratios);
* on CUDA also batch 4 with bf16 weights + bf16 autocast (the 7B recipe's precision setting).

Peak memory is the process's peak resident set on CPU (model and libraries included) and
``torch.cuda.max_memory_allocated`` on CUDA. The paper's 7B recipe runs for ``--steps-7b`` steps
when CUDA is present and local copies of the weights are given (``--mllm-path`` / ``--sam-path``, or
``SEGANSWER_QWEN_PATH`` / ``SEGANSWER_SAM_PATH``); otherwise the script says why it skipped it.
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

RESULTS = Path(__file__).parent / "results" / "stage1.json"


def worker(spec: dict) -> dict:
    """Train one configuration; return its throughput and peak memory."""
    import torch

    from seganswer_cli.config import Stage1Config, load_config
    from seganswer_cli.train.stage1 import train_stage1

    cfg = load_config(Stage1Config, spec["config"], spec["overrides"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train_stage1(cfg, spec["out"], quiet=True)
    wall = time.perf_counter() - started
    records = train_records(spec["out"])
    rates = [r["samples_per_s"] for r in records[1:]] or [records[0]["samples_per_s"]]  # step 1 warms up
    return {
        "samples_per_s": statistics.median(rates),
        **peak_memory(),
        "steps": len(records),
        "wall_s": wall,
        "final_loss": records[-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per tiny configuration")
    parser.add_argument("--steps-7b", type=int, default=3, help="optimizer steps of the 7B recipe")
    parser.add_argument("--mllm-path", default=os.environ.get("SEGANSWER_QWEN_PATH"))
    parser.add_argument("--sam-path", default=os.environ.get("SEGANSWER_SAM_PATH"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    import torch

    from seganswer_cli.data import ShapesConfig, write_synthetic

    cuda = torch.cuda.is_available()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shapes = ShapesConfig(width=96, height=96, min_size=32, max_size=64, min_objects=1, max_objects=2)
        write_synthetic(root / "shapes", "refseg", 64, shapes, seed=0)
        base = {"data": [f"shapes={root / 'shapes'}"], "phase": "lora", "model": "tiny", "max_steps": args.steps,
                "save_every": 0, "val_data": None}
        rows.append(run_worker(__file__, "tiny lora batch 1", "stage1-tiny", {**base, "batch_size": 1}, root))
        rows.append(run_worker(__file__, "tiny lora batch 4", "stage1-tiny", {**base, "batch_size": 4}, root))
        rows.append(run_worker(__file__, "tiny lora batch 4 + grad ckpt", "stage1-tiny",
                               {**base, "batch_size": 4, "gradient_checkpointing": True}, root))
        if cuda:
            rows.append(run_worker(__file__, "tiny lora batch 4 bf16", "stage1-tiny",
                                   {**base, "batch_size": 4, "dtype": "bfloat16", "mixed_precision": "bf16"}, root))
        seven_b = None
        if not cuda:
            notes.append("7B recipe skipped: no CUDA device")
        elif not (args.mllm_path and args.sam_path and Path(args.mllm_path).is_dir() and Path(args.sam_path).is_dir()):
            notes.append("7B recipe skipped: give local weights with --mllm-path/--sam-path "
                         "(or SEGANSWER_QWEN_PATH/SEGANSWER_SAM_PATH)")
        else:
            seven_b = run_worker(__file__, "7b lora batch 1", "stage1-7b",
                                 {**base, "model": "qwen2.5-vl-7b", "mllm_path": args.mllm_path, "sam_path": args.sam_path,
                                  "max_steps": args.steps_7b, "batch_size": 1, "grad_accum": 1}, root)
            rows.append(seven_b)

    by_name = {r["name"]: r for r in rows}
    b1, b4, ckpt = by_name["tiny lora batch 1"], by_name["tiny lora batch 4"], by_name["tiny lora batch 4 + grad ckpt"]
    ratios = {
        "throughput batch 4 / batch 1": b4["samples_per_s"] / b1["samples_per_s"],
        "peak memory grad ckpt / none (batch 4)": ckpt["peak_memory_mb"] / b4["peak_memory_mb"],
        "throughput grad ckpt / none (batch 4)": ckpt["samples_per_s"] / b4["samples_per_s"],
    }
    report(f"Stage 1 training ({'CUDA: ' + device_name() if cuda else 'CPU'})", {
        "samples/s": lambda r: f"{r['samples_per_s']:.2f}",
        "peak memory (MB)": lambda r: f"{r['peak_memory_mb']:.0f}",
        "steps": lambda r: str(r["steps"]),
        "final loss": lambda r: f"{r['final_loss']:.3f}",
    }, rows, ratios, notes, RESULTS, args.steps)


if __name__ == "__main__":
    main()
