"""Options shared by several commands, defined once (typer ``Annotated`` aliases)."""

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A seganswer model folder, or a preset name (tiny, qwen2.5-vl-7b).",
    ),
]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1, ...")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (for batch jobs).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
