"""Evaluation throughput: samples per second one by one vs batched, through the real harness.

Run: ``.venv/bin/python bench/bench_eval.py [--n 32] [--batch-size 8] [--max-new-tokens 32]``. Prints
a table and writes ``bench/results/eval.json``.

Each row runs ``EvalRun.execute`` (what ``seganswer eval`` calls: image loading, the model, scoring,
one ``predictions.jsonl`` line per sample, the summary) into a fresh run folder on the tiny model
(CPU unless ``--device``), with ``--batch-size 1`` and then ``--batch-size N``:

* ``shapes-vqa`` (V*-like questions on the generated 1024 x 1024 benchmark) through the reasoning
  loop; the tiny model's weights are random, so every question runs to ``--max-new-tokens``;
* ``shapes-refseg`` through ``segment_batch`` (the Stage 1 prompt, one forward per batch, SAM 2.1's
  encoder once for the batch's images and its decoder once for their ``<|seg|>`` states).

Questions stream through the reasoning loop (``ReasoningLoop.stream``): a finished question's slot is
taken by the next one. The ratio batched / one-by-one is the speed-up from batching. The bench also
counts the samples whose prediction batching left identical (the whole record but its timings: output
text, steps, masks as RLE) and, for masks, the most pixels that differ in one mask: batched kernels
round differently, which can flip a pixel sitting at the threshold.

The machine's other work moves timings (two shared cores here), so each way runs ``--repeat`` times,
alternating, and the best time of each is kept; the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from seganswer_cli.eval import get_benchmark
from seganswer_cli.eval.runner import PREDICTIONS, EvalRun, RunSettings
from seganswer_cli.model import SegAnswerModel

RESULTS = Path(__file__).parent / "results" / "eval.json"


def run_once(name: str, n: int, batch_size: int, max_new_tokens: int, model, folder: Path) -> tuple[float, list]:
    """Seconds to evaluate the first ``n`` items of ``name``, and the predictions (without timings)."""
    spec = get_benchmark(name)
    data = spec.read(None, limit=n)
    settings = RunSettings.create(spec, data, data_path=None, split=None, model="tiny", roi="mask",
                                  max_seg_steps=1, max_new_tokens=max_new_tokens)
    run = EvalRun.open(spec, data, settings, folder, limit=n)
    start = time.perf_counter()
    run.execute(lambda: model, batch_size=batch_size)
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (folder / PREDICTIONS).read_text().splitlines()]
    for record in records:
        record.pop("timings")
    return seconds, records


def max_mask_difference(one: list[dict], many: list[dict]) -> int | None:
    """Most pixels that differ between the two runs' masks of one sample (None without masks)."""
    if "mask" not in one[0]:
        return None
    from seganswer_cli.masks import decode_rle

    return max(int((decode_rle(a["mask"]) != decode_rle(b["mask"])).sum()) for a, b in zip(one, many, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="Samples per benchmark.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2, help="Runs of each way (alternating); the best is kept.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = SegAnswerModel.from_preset("tiny").to(args.device).eval()
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("shapes-vqa", "shapes-refseg"):
            # warm-up: first calls pay for lazy imports and allocator growth
            run_once(name, 2, 2, 4, model, Path(tmp) / f"warm-{name}")
            ones, manys = [], []
            for r in range(args.repeat):
                ones.append(run_once(name, args.n, 1, args.max_new_tokens, model, Path(tmp) / f"{name}-1-{r}"))
                manys.append(run_once(name, args.n, args.batch_size, args.max_new_tokens, model,
                                      Path(tmp) / f"{name}-{args.batch_size}-{r}"))
            (one_s, one), (many_s, many) = min(ones, key=lambda t: t[0]), min(manys, key=lambda t: t[0])
            one, many = (sorted(records, key=lambda r: r["id"]) for records in (one, many))  # streamed: as finished
            rows.append({
                "benchmark": name, "samples": args.n, "batch_size": args.batch_size,
                "one_by_one_samples_per_s": args.n / one_s, "batched_samples_per_s": args.n / many_s,
                "ratio_batched_over_one_by_one": one_s / many_s,
                "identical_predictions": sum(a == b for a, b in zip(one, many, strict=True)),
                "max_mask_pixels_differing": max_mask_difference(one, many),
            })

    table = Table(title=f"seganswer eval throughput (tiny model, {args.device}, "
                  f"{args.max_new_tokens} new tokens per question)")
    for column in ("benchmark", "samples", "one by one (samples/s)", f"batch {args.batch_size} (samples/s)",
                   "ratio", "identical", "max px differing"):
        table.add_column(column, justify="left" if column == "benchmark" else "right", no_wrap=column == "benchmark")
    for row in rows:
        table.add_row(row["benchmark"], str(row["samples"]), f"{row['one_by_one_samples_per_s']:.2f}",
                      f"{row['batched_samples_per_s']:.2f}", f"{row['ratio_batched_over_one_by_one']:.2f}x",
                      f"{row['identical_predictions']}/{row['samples']}",
                      "-" if row["max_mask_pixels_differing"] is None else str(row["max_mask_pixels_differing"]))
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "device": args.device, "max_new_tokens": args.max_new_tokens,
        "repeat": args.repeat, "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "results": rows,
    }, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
