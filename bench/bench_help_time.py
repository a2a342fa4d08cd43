"""How long ``seganswer --help`` and every subcommand's ``--help`` take, against ``python -c pass``.

Run: ``.venv/bin/python bench/bench_help_time.py [--repeat 15]``. Each command line runs in a fresh
process ``--repeat`` times, interleaved with the baseline so that load on the machine hits both
alike; the fastest run of each is kept (the noise of a shared machine only adds time). Prints a
table and writes ``bench/results/help_time.json``: seconds, and the ratio to ``python -c pass``
(interpreter start-up, the part no package can remove). The goal (issue 28) is under 0.3 s each.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "help_time.json"
GOAL_SECONDS = 0.3
HEAVY = ("torch", "transformers", "numpy", "PIL", "pydantic")


def command_paths() -> list[list[str]]:
    """Every command and group of the app, as the words typed after ``seganswer``."""
    import typer.main

    from seganswer_cli.cli import app

    def walk(command, path):
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "COLUMNS": "100"})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr[-2000:]}")
    return elapsed


def heavy_imports(path: list[str]) -> list[str]:
    """The heavy modules a ``--help`` of ``path`` imports (expected: none)."""
    code = ("import sys, contextlib, io\nfrom seganswer_cli.cli import main\n"
            f"sys.argv = ['seganswer', *{path!r}, '--help']\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main()\n    except SystemExit: pass\n"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    return [m for m in subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
            .split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per command line (the fastest is kept)")
    args = parser.parse_args()
    paths = command_paths()
    baseline = [sys.executable, "-c", "pass"]
    lines = {"python -c pass": baseline} | {
        " ".join(["seganswer", *p, "--help"]): [sys.executable, "-m", "seganswer_cli", *p, "--help"] for p in paths}
    best = dict.fromkeys(lines, float("inf"))
    for _ in range(args.repeat):
        for name, argv in lines.items():
            best[name] = min(best[name], seconds(argv))
    base = best.pop("python -c pass")
    rows = [{"command": name, "seconds": s, "ratio_to_python": s / base, "under_goal": s < GOAL_SECONDS,
             "heavy_imports": heavy_imports(path)} for (name, s), path in zip(best.items(), paths)]

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"--help time (fastest of {args.repeat}; python -c pass {base * 1000:.0f} ms)")
    for column in ("command", "ms", "x python -c pass", f"< {GOAL_SECONDS} s", "heavy imports"):
        table.add_column(column, justify="left" if column in ("command", "heavy imports") else "right")
    for r in rows:
        table.add_row(r["command"], f"{r['seconds'] * 1000:.0f}", f"{r['ratio_to_python']:.1f}",
                      "yes" if r["under_goal"] else "NO", ", ".join(r["heavy_imports"]) or "-")
    console = Console()
    console.print(table)
    slowest = max(rows, key=lambda r: r["seconds"])
    console.print(f"slowest: {slowest['command']} {slowest['seconds']:.3f} s "
                  f"({slowest['ratio_to_python']:.1f}x python -c pass); goal {GOAL_SECONDS} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                                   "cpus": os.cpu_count(), "load_average": os.getloadavg(), "repeat": args.repeat,
                                   "goal_seconds": GOAL_SECONDS, "python_c_pass_seconds": base,
                                   "results": rows}, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
