"""FSDP2 vs DDP: Stage 2 step throughput and peak memory per process, two processes (torchrun).

Run: ``.venv/bin/python bench/bench_sharding.py [--steps 8]``. Prints a table and writes
``bench/results/sharding.json``. Both configurations train the tiny Stage 2 recipe (``stage2-tiny``,
batch 2 per process, online masks, from a saved tiny model) on two processes: ``--strategy ddp``
and ``--strategy fsdp`` (gloo on CPU, NCCL when CUDA has two GPUs). Throughput is the median
samples/s of the steps after the first; peak memory is the larger of the two processes' (resident
set on CPU, ``torch.cuda.max_memory_allocated`` on CUDA).

On CPU the tiny model (3 M parameters, ~48 MB of weights, gradients and AdamW state) is small next
to what every process holds anyway (torch, transformers: ~0.5 GB), so the memory ratio shows the
engine's overhead rather than the saving; FSDP2's gathers and reduce-scatters over gloo show in the
throughput. The saving at scale is the memory plan's (docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _training import device_name, peak_memory, report, train_records

RESULTS = Path(__file__).parent / "results" / "sharding.json"


def worker(spec: dict) -> None:
    """One process of a two-process run: train, then write this process's peak memory."""
    import torch

    from seganswer_cli.config import Stage2Config, load_config
    from seganswer_cli.train.stage2 import train_stage2

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.reset_peak_memory_stats()
    train_stage2(load_config(Stage2Config, spec["config"], spec["overrides"]), spec["out"], quiet=True)
    rank = os.environ.get("RANK", "0")
    (Path(spec["out"]) / f"peak-rank{rank}.json").write_text(json.dumps(peak_memory()))


def run_two(name: str, overrides: dict, root: Path, port: int) -> dict:
    out = root / name
    spec = {"config": "stage2-tiny", "overrides": {**overrides, "strategy": name}, "out": str(out)}
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(port), __file__, "--worker",
                           json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    records = train_records(out)
    timed = records[1:] or records  # step 1 warms up
    peaks = [json.loads(p.read_text()) for p in sorted(out.glob("peak-rank*.json"))]
    return {"name": name, "samples_per_s": statistics.median(r["samples_per_s"] for r in timed),
            "peak_memory_mb": max(p["peak_memory_mb"] for p in peaks), "memory_kind": peaks[0]["memory_kind"],
            "steps": len(records), "wall_s": time.perf_counter() - started, "final_loss": records[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per configuration")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    import torch

    from seganswer_cli.data import ShapesConfig, write_synthetic
    from seganswer_cli.model import SegAnswerModel

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shapes = ShapesConfig(width=96, height=96, min_size=24, max_size=48, min_objects=2, max_objects=3)
        write_synthetic(root / "vqa", "vqa", 64, shapes, seed=0)
        SegAnswerModel.from_preset("tiny").save_pretrained(root / "tiny")
        base = {"data": [f"shapes={root / 'vqa'}"], "model": str(root / "tiny"), "allow_untrained_start": True,
                "max_steps": args.steps, "save_every": 0, "batch_size": 2, "direct_share": 0.0}
        rows = [run_two("ddp", base, root, 29561), run_two("fsdp", base, root, 29562)]
    ddp, fsdp = rows
    ratios = {"throughput fsdp / ddp": fsdp["samples_per_s"] / ddp["samples_per_s"],
              "peak memory fsdp / ddp": fsdp["peak_memory_mb"] / ddp["peak_memory_mb"]}
    notes = [f"2 processes, {'CUDA' if torch.cuda.is_available() else 'CPU (gloo)'}; same losses within 1e-5 "
             f"(final: ddp {ddp['final_loss']:.5f}, fsdp {fsdp['final_loss']:.5f})",
             "CPU memory is the process RSS, dominated by libraries at this model size"]
    report(f"Stage 2 tiny, FSDP2 vs DDP ({device_name()})", {
        "samples/s": lambda r: f"{r['samples_per_s']:.2f}",
        "peak memory (MB)": lambda r: f"{r['peak_memory_mb']:.0f}",
        "final loss": lambda r: f"{r['final_loss']:.4f}",
    }, rows, ratios, notes, RESULTS, args.steps)


if __name__ == "__main__":
    main()
