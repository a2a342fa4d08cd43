"""Throughput of the shapes-world generator and the dataset readers (samples per second).

Run: ``.venv/bin/python bench/bench_data.py [--n 200]``. Prints a table and writes
``bench/results/data.json``. Two comparisons are reported as ratios:

* reading lazily (masks stay RLE/polygons) vs eagerly (every mask decoded while reading), for the
  seganswer folder format and the RefCOCO refer layout: what lazy masks buy when indexing a set;
* a 256 px canvas vs a 2048 px canvas with a small target: the cost of high-resolution scenes.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from seganswer_cli.data import ShapesConfig, generate_samples, open_dataset, write_synthetic

RESULTS = Path(__file__).parent / "results" / "data.json"


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench_generator(n: int) -> list[dict]:
    rows = []
    for kind in ("refseg", "vqa", "rl"):
        seconds, samples = timed(lambda kind=kind: list(generate_samples(kind, n, ShapesConfig(), seed=0)))
        rows.append({"name": f"generate {kind} 256x256", "samples": n, "seconds": seconds,
                     "samples_per_s": rate(n, seconds)})
    big = ShapesConfig(width=2048, height=2048, min_size=32, max_size=256, target_min_size=24, target_max_size=40,
                       clutter=500)
    small_n = max(5, n // 20)
    seconds, _ = timed(lambda: list(generate_samples("vqa", small_n, big, seed=0)))
    rows.append({"name": "generate vqa 2048x2048 small target", "samples": small_n, "seconds": seconds,
                 "samples_per_s": rate(small_n, seconds)})
    return rows


def read(path: Path, fmt: str | None, eager: bool) -> int:
    count = 0
    for sample in open_dataset(path, fmt):
        if eager:
            sample.mask.decode()
        count += 1
    return count


def make_refer(root: Path, n_refs: int) -> Path:
    """A RefCOCO refer layout with ``n_refs`` refs (2 sentences each) over 20 images of 640 x 480."""
    images = root / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image_infos, anns, refs = [], [], []
    for i in range(20):
        name = f"COCO_train2014_{i:012d}.jpg"
        Image.new("RGB", (640, 480), (120, 120, 120)).save(images / name)
        image_infos.append({"id": i, "file_name": name, "height": 480, "width": 640})
    for r in range(n_refs):
        x, y = rng.uniform(0, 500), rng.uniform(0, 350)
        poly = [x, y, x + 100, y, x + 120, y + 80, x + 50, y + 120, x, y + 90]
        anns.append({"id": r, "image_id": r % 20, "category_id": 1, "segmentation": [poly]})
        refs.append({"ref_id": r, "ann_id": r, "image_id": r % 20, "category_id": 1, "split": "train",
                     "sentences": [{"sent_id": 2 * r, "sent": "left one"}, {"sent_id": 2 * r + 1, "sent": "the box"}]})
    (root / "refcoco").mkdir()
    (root / "refcoco" / "instances.json").write_text(json.dumps(
        {"images": image_infos, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    return root


def bench_readers(n: int, tmp: Path) -> tuple[list[dict], dict]:
    rows, ratios = [], {}
    folder = write_synthetic(tmp / "shapes", "refseg", n, ShapesConfig(width=512, height=512), seed=0)
    refer = make_refer(tmp / "refer_seg", 5 * n)
    for label, path, fmt in (("seganswer folder", folder, None), ("refcoco refer layout", refer, "refcoco")):
        times = {}
        for mode in ("lazy", "eager"):
            seconds, count = timed(lambda path=path, fmt=fmt, mode=mode: read(path, fmt, mode == "eager"))
            times[mode] = seconds
            rows.append({"name": f"read {label} ({mode} masks)", "samples": count, "seconds": seconds,
                         "samples_per_s": rate(count, seconds)})
        ratios[f"{label}: eager / lazy time"] = times["eager"] / times["lazy"]
    return rows, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="samples per generator run (readers use 1-10x this)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_generator(args.n)
        reader_rows, ratios = bench_readers(args.n, Path(tmp))
    rows += reader_rows
    gen = {r["name"]: r["samples_per_s"] for r in rows}
    ratios["generate vqa: 256px / 2048px samples per s"] = gen["generate vqa 256x256"] / gen[
        "generate vqa 2048x2048 small target"]

    table = Table(title="seganswer data throughput")
    for column in ("benchmark", "samples", "seconds", "samples/s"):
        table.add_column(column, justify="left" if column == "benchmark" else "right")
    for r in rows:
        table.add_row(r["name"], str(r["samples"]), f"{r['seconds']:.3f}", f"{r['samples_per_s']:.1f}")
    console = Console()
    console.print(table)
    for name, value in ratios.items():
        console.print(f"{name}: {value:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                                   "n": args.n, "results": rows, "ratios": ratios}, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
