"""What the benchmarks share: one training configuration per process, its training records and peak
memory, the printed table + results file (bench_stage1.py, bench_stage2.py, bench_sharding.py), and a
tiny model that follows the Stage 2 pattern (bench_stage3.py, bench_batching.py)."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path


def train_records(out: str | Path) -> list[dict]:
    """The ``kind: train`` records of a run folder's metrics.jsonl."""
    from seganswer_cli.train.runs import MetricsLog

    return [r for r in MetricsLog(Path(out) / "metrics.jsonl").read() if r["kind"] == "train"]


def peak_memory() -> dict:
    """This process's peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, resident set on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    used = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_memory_mb": used / 2**20, "memory_kind": "cuda allocated" if cuda else "process RSS"}


def run_worker(script: str, name: str, config: str, overrides: dict, root: Path) -> dict:
    """Run ``script --worker SPEC`` in its own process (so its peak memory is its own); its last
    stdout line is the JSON row."""
    spec = {"config": config, "overrides": overrides, "out": str(root / name.replace(" ", "_"))}
    proc = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    return {"name": name, **json.loads(proc.stdout.strip().splitlines()[-1])}


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def report(title: str, columns: dict, rows: list[dict], ratios: dict, notes: list[str], results: Path,
           steps: int) -> None:
    """Print the rows (``columns``: header -> cell formatter of a row), the ratios and notes, and
    write them with the machine's facts to ``results``."""
    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=title)
    table.add_column("configuration")
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["name"], *(cell(r) for cell in columns.values()))
    console.print(table)
    for name, value in ratios.items():
        console.print(f"{name}: {value:.2f}")
    for note in notes:
        console.print(note)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "device": device_name()},
        "steps": steps, "rows": rows, "ratios": ratios, "notes": notes,
    }, indent=2) + "\n")
    console.print(f"wrote {results}")


#: The answer ``stand_in_stage2_model(long_answer=True)`` teaches on noise image 2: ~100 tokens.
LONG_ANSWER = " ".join(["a red disc left of a blue square and a green star"] * 5)


def stand_in_stage2_model(folder: Path, *, long_answer: bool = False) -> Path:
    """A tiny stand-in Stage 2 model saved in ``folder``: two conversations overfitted until it emits
    ``observe <|seg|>.`` -> segmented view -> ``<answer>`` on noise images (the recipe of the tests'
    ``patterned_model``, ~2 s). On a plain image it answers at once, in a few tokens. With
    ``long_answer``, a third conversation (noise image 2) teaches ``LONG_ANSWER``."""
    import numpy as np
    import torch
    from PIL import Image

    from seganswer_cli.model import SegAnswerModel
    from seganswer_cli.model.conversation import reasoning_sequence

    torch.manual_seed(0)
    model = SegAnswerModel.from_preset("tiny").train()
    sequences = []
    cases = [(0, "What colour is the disc?", (40, 100, 60, 150), "red"),
             (1, "Which shape is on the left?", (90, 160, 20, 80), "square")]
    if long_answer:
        cases.append((2, "Describe the scene.", (20, 120, 40, 200), LONG_ANSWER))
    for seed, question, box, answer in cases:
        image = Image.fromarray((np.random.RandomState(seed).rand(180, 240, 3) * 255).astype(np.uint8))
        mask = np.zeros((180, 240), bool)
        mask[box[0] : box[1], box[2] : box[3]] = True
        sequences.append(reasoning_sequence(model, model.global_view(image), question, answer,
                                               view=model.segmented_view(image, mask)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(200 if long_answer else 120):
        loss = model(sequences).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().save_pretrained(folder)
    return folder
