"""Options shared by several commands, defined once (typer ``Annotated`` aliases)."""

from pathlib import Path
from typing import Annotated

import typer

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A seganswer model folder, or a preset name (shapes, shapes-base, tiny, qwen2.5-vl-7b, qwen2.5-vl-7b-zoom).",
    ),
]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1, ...")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (for batch jobs).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]

DEFAULT_MODEL = "shapes"
"""Default of ``--model`` for infer, segment and eval: the trained demo model shipped in the package."""

ModelDefaultOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A seganswer model folder or a preset name (default: shapes, the shipped demo model; "
        "tiny: random weights, for tests).",
        show_default=False,
    ),
]
DTYPES = ("auto", "float32", "bfloat16", "float16")
DtypeOpt = Annotated[str, typer.Option("--dtype", help=f"Weights dtype: {', '.join(DTYPES)}.")]


def resolve_device(name: str):
    """``auto`` -> cuda when present, else cpu; anything else as torch understands it."""
    import torch

    from seganswer_cli.errors import UsageError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"unknown --device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for CUDA but torch sees no GPU")
    return device


def resolve_dtype(name: str):
    """``auto`` -> None (the checkpoint's own dtype); otherwise the torch dtype of that name."""
    from seganswer_cli.errors import UsageError

    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    if name == "auto":
        return None
    import torch

    return getattr(torch, name)


def load_model(spec: str, device: str = "auto", dtype: str = "auto"):
    """A ``SegAnswerModel`` from a folder or preset name, on ``device``, in eval mode."""
    from seganswer_cli.model import SegAnswerModel

    torch_dtype = resolve_dtype(dtype)
    model = SegAnswerModel.from_pretrained(spec, dtype=torch_dtype)
    return model.to(resolve_device(device)).eval()


def note_generation_config(model, console) -> None:
    """Say on ``console`` (stderr) that the checkpoint's generation settings are overridden, when it has any."""
    from seganswer_cli.reasoning import generation_config_note

    note = generation_config_note(model)
    if note:
        console.print(f"[dim]{note}[/]", highlight=False)
