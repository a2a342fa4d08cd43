"""Compare two folders of ``recipes/shapes-demo.sh``, step by step: does a rerun retrace the run?

    python recipes/compare-runs.py RUN_A RUN_B [--json]

What it compares, for every step found in RUN_A:
- ``data/<name>``: every file, byte for byte;
- a training run (a folder with ``metrics.jsonl``): every record, timings aside (keys ending in
  ``_s`` or ``_seconds``), with the largest difference of each numeric field that differs;
- a model (a run's ``model/``, or a folder with ``seganswer.json`` such as ``2-merged`` and ``final``):
  every tensor of every ``*.safetensors`` file, with the largest absolute difference; the JSON files
  beside them are not compared (they name the run's paths).

One line per step; exit 0 when everything is identical, 1 when something differs or is missing in
RUN_B, 2 on bad input. On the same machine and thread count a rerun is identical; elsewhere float
rounding moves the numbers, and the largest differences printed say by how much.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

TIMING_SUFFIXES = ("_s", "_seconds")


def files_of(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def compare_files(a: Path, b: Path) -> dict:
    fa, fb = files_of(a), files_of(b)
    differ = sorted(k for k in fa if k in fb and fa[k] != fb[k])
    missing = sorted(set(fa) - set(fb))
    extra = sorted(set(fb) - set(fa))
    return {"files": len(fa), "identical": len(fa) - len(differ) - len(missing),
            "differ": differ[:5], "missing": missing[:5], "extra": extra[:5],
            "same": not (differ or missing or extra)}


def records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            out.append({k: v for k, v in record.items() if not k.endswith(TIMING_SUFFIXES)})
    return out


def numeric_gap(x, y) -> float | None:
    """Largest |x - y| over the numbers of two equal-shaped values (nested dicts too); None if not numbers."""
    if isinstance(x, dict) and isinstance(y, dict) and x.keys() == y.keys():
        gaps = [numeric_gap(x[k], y[k]) for k in x]
        return None if any(g is None for g in gaps) else max(gaps, default=0.0)
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return abs(x - y) if math.isfinite(x) and math.isfinite(y) else (0.0 if x == y else math.inf)
    return None if x != y else 0.0


def compare_metrics(a: Path, b: Path) -> dict:
    ra, rb = records(a), records(b)
    n = min(len(ra), len(rb))
    differing = [i for i in range(n) if ra[i] != rb[i]]
    gaps: dict[str, float] = {}
    for i in differing:
        for key in set(ra[i]) | set(rb[i]):
            if ra[i].get(key) != rb[i].get(key):
                gap = numeric_gap(ra[i].get(key), rb[i].get(key))
                gaps[key] = max(gaps.get(key, 0.0), math.inf if gap is None else gap)
    return {"records": [len(ra), len(rb)], "identical": n - len(differing),
            "first_difference": differing[0] if differing else None,
            "largest_differences": dict(sorted(gaps.items())),
            "same": len(ra) == len(rb) and not differing}


def compare_weights(a: Path, b: Path) -> dict:
    from safetensors.torch import load_file

    result = {"tensors": 0, "identical": 0, "largest_difference": 0.0, "missing": [], "same": True}
    for file in sorted(a.rglob("*.safetensors")):
        name = str(file.relative_to(a))
        other = b / name
        if not other.is_file():
            result["missing"].append(name)
            continue
        ta, tb = load_file(file), load_file(other)
        for key, tensor in ta.items():
            result["tensors"] += 1
            if key not in tb or tb[key].shape != tensor.shape:
                result["missing"].append(f"{name}:{key}")
                continue
            if tensor.dtype == tb[key].dtype and bool((tensor == tb[key]).all()):
                result["identical"] += 1
            else:
                gap = (tensor.double() - tb[key].double()).abs().max().item()
                result["largest_difference"] = max(result["largest_difference"], gap)
    result["same"] = not result["missing"] and result["identical"] == result["tensors"]
    return result


def steps(run: Path) -> list[tuple[str, str, Path]]:
    """(name, what, relative path) of every step of a recipe folder, in the recipe's order."""
    found = []
    data = run / "data"
    if data.is_dir():
        found += [(f"data/{d.name}", "data", d.relative_to(run)) for d in sorted(data.iterdir()) if d.is_dir()]
    for folder in sorted(p for p in run.iterdir() if p.is_dir() and p.name != "data"):
        if (folder / "metrics.jsonl").is_file():
            found.append((folder.name, "metrics", (folder / "metrics.jsonl").relative_to(run)))
        if (folder / "model" / "seganswer.json").is_file():
            found.append((f"{folder.name}/model", "weights", (folder / "model").relative_to(run)))
        elif (folder / "seganswer.json").is_file():
            found.append((folder.name, "weights", folder.relative_to(run)))
    return found


COMPARE = {"data": compare_files, "metrics": compare_metrics, "weights": compare_weights}


def describe(what: str, result: dict) -> str:
    if what == "data":
        text = f"{result['identical']} of {result['files']} files identical"
        for key in ("differ", "missing", "extra"):
            if result[key]:
                text += f"; {key}: {', '.join(result[key])}"
        return text
    if what == "metrics":
        a, b = result["records"]
        text = f"{result['identical']} of {min(a, b)} records identical" + (f" ({a} vs {b} records)" if a != b else "")
        if result["first_difference"] is not None:
            gaps = ", ".join(f"{k} {v:.3g}" for k, v in result["largest_differences"].items())
            text += f"; first difference at record {result['first_difference']}; largest: {gaps}"
        return text
    text = f"{result['identical']} of {result['tensors']} tensors identical"
    if result["identical"] < result["tensors"]:
        text += f"; largest difference {result['largest_difference']:.3g}"
    if result["missing"]:
        text += f"; missing: {', '.join(result['missing'][:5])}"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="a recipes/shapes-demo.sh folder")
    parser.add_argument("run_b", type=Path, help="the rerun to compare with it")
    parser.add_argument("--json", action="store_true", help="one JSON object per step instead of lines")
    args = parser.parse_args()
    for run in (args.run_a, args.run_b):
        if not run.is_dir():
            print(f"compare-runs: {run} is not a folder", file=sys.stderr)
            return 2
    found = steps(args.run_a)
    if not found:
        print(f"compare-runs: {args.run_a} holds no data/, metrics.jsonl or model folder of the recipe", file=sys.stderr)
        return 2
    all_same = True
    for name, what, rel in found:
        other = args.run_b / rel
        if not other.exists():
            result = {"same": False, "missing_in_b": str(other)}
        else:
            result = COMPARE[what](args.run_a / rel, other)
        all_same &= result["same"]
        if args.json:
            print(json.dumps({"step": name, "what": what, **result}))
        else:
            text = f"missing in {args.run_b}" if "missing_in_b" in result else describe(what, result)
            print(f"{'same' if result['same'] else 'DIFF'}  {name}: {text}")
    if not args.json:
        print("identical" if all_same else "not identical")
    return 0 if all_same else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, ValueError) as e:  # unreadable file, bad JSON line, damaged safetensors
        print(f"compare-runs: {e}", file=sys.stderr)
        sys.exit(2)
