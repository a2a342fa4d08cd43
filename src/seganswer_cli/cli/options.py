"""Options shared by several commands, defined once (typer ``Annotated`` aliases), and the checks of
the paths a command writes, made when the command line is parsed.

Choice lists are spelled here as ``Literal`` types, so that ``--help`` shows them and a wrong value
is refused with the usage line; lists whose truth lives in a heavier module (``config.py``, the
benchmark registry) are copied, not imported (``--help`` must stay fast), and
``tests/test_cli_help.py`` checks that each copy equals its source.
"""

import errno
import os
import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import typer

from seganswer_cli.errors import UsageError

# -- outputs: checked when the command line is parsed ---------------------------------------------
#
# Each output option names one of these callbacks; the path it gets is refused, in one line naming
# it, when it cannot be written: a file in the way of its folder, a folder where a file goes, no
# permission, a file system that takes no files (/proc), an extension that says no known type.
# Nothing is created here: the command creates the folders when it writes.


def _flag(param) -> str:
    """The parameter as the user wrote it: ``--save-vis``, or ``OUT_DIR`` for an argument."""
    long = [o for o in getattr(param, "opts", ()) if o.startswith("--")]
    return long[0] if long else (param.metavar or param.name.upper())


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cannot_write_in(folder: Path) -> str | None:
    """Why no file can be created in the existing folder ``folder`` (None when one can). The probe is
    an anonymous temporary file (nothing appears in the folder on Linux; elsewhere it is removed)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as e:
        # /proc, /sys: the folder is there but its file system makes no files (ENOENT, EINVAL, ...)
        why = e.strerror if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT) \
            else "its file system takes no new files"
        return f"cannot write in {folder} ({why or e})"


def output_problem(path: Path, *, folder: bool) -> str | None:
    """Why ``path`` cannot be written as a file (``folder=False``) or as a folder, or None."""
    if path.is_dir():
        return _cannot_write_in(path) if folder else f"{path} is a folder, not a file"
    if path.exists():
        if folder:
            return f"{path} is a file, not a folder"
        if not path.is_file():
            return f"{path} is not a regular file"
        try:
            open(path, "ab").close()  # opened, not written: contents and times unchanged
        except OSError as e:
            return f"cannot write {path} ({e.strerror or e})"
        return _cannot_write_in(path.parent)  # figures replace the old file by a new one beside it
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    return _cannot_write_in(ancestor)


def _check(param, value: Path | None, *, folder: bool, suffixes: dict | None = None, kind: str = "") -> Path | None:
    if value is None:
        return None
    flag = _flag(param)
    if suffixes is not None and value.suffix.lower() not in suffixes:
        known = ", ".join(dict.fromkeys(suffixes))
        got = f"unknown {kind} extension {value.suffix!r}" if value.suffix else "no file extension"
        raise UsageError(f"{flag} {value}: {got}; name the file {known}")
    problem = output_problem(value, folder=folder)
    if problem:
        raise UsageError(f"{flag} {value}: {problem}")
    return value


def image_output(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Callback of an option that writes a figure: any image type ``viz.save_image`` writes."""
    from seganswer_cli.viz import IMAGE_FORMATS

    return _check(param, value, folder=False, suffixes=IMAGE_FORMATS, kind="image")


def mask_output(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Callback of an option that writes a mask: a lossless image type (JPEG would blur its edge)."""
    from seganswer_cli.viz import MASK_FORMATS

    return _check(param, value, folder=False, suffixes=MASK_FORMATS, kind="lossless image")


def jsonl_output(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Callback of an option that appends JSON Lines records."""
    return _check(param, value, folder=False, suffixes={".jsonl": "JSON Lines"}, kind="JSON Lines")


def folder_output(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """Callback of an option that writes a folder (which the command's own rules may further restrict:
    empty, or a run of the same kind)."""
    return _check(param, value, folder=True)


def refuse_overwriting(output: Path | None, source: Path | None, flag: str, what: str) -> None:
    """Refuse (one line) an ``output`` that is the input file ``source``: writing it would destroy it."""
    if output is None or source is None:
        return
    same = Path(os.path.abspath(output)) == Path(os.path.abspath(source))
    if not same and output.exists() and source.exists():
        same = os.path.samefile(output, source)
    if same:
        raise UsageError(f"{flag} {output} is the {what}: writing it would destroy it; choose another file")


# -- shared options ------------------------------------------------------------------------------

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A seganswer model folder, or a preset name (shapes, shapes-base, tiny, qwen2.5-vl-7b, qwen2.5-vl-7b-zoom, "
             "qwen3-vl-8b, tiny-qwen3-vl, shapes-base-qwen3-vl).",
    ),
]
OutDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.", callback=folder_output)]


def _device_form(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", value):
        raise typer.BadParameter(f"{value!r} is not a device: auto, cpu, cuda, cuda:N, mps")
    return value


DeviceOpt = Annotated[
    str, typer.Option("--device", metavar="<auto|cpu|cuda|cuda:N|mps>", callback=_device_form,
                      help="torch device: auto (cuda if present, else cpu), cpu, cuda, cuda:1, ...")
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
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(Dtype)
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="Weights dtype (auto: the checkpoint's own).")]

#: ``model/sparse_patches.py``'s ``ROI_MODES``.
Roi = Literal["mask", "bbox", "none"]
RoiOpt = Annotated[Roi, typer.Option("--roi", help="Second look: mask (sparse segmented patches), bbox (box "
                                     "crop), none (no second look: the answer comes from the first look).")]
#: ``reasoning.py``'s ``OPENINGS``.
Opening = Literal["model", "forced"]
OpeningOpt = Annotated[Opening, typer.Option("--opening", help="model (the model writes its turns and decides "
                                             "whether to segment) or forced (every --roi asked the same way: "
                                             "mask/bbox are given 'To find the answer, it should first observe "
                                             "<|seg|>.' and each mode writes only the answer).")]


def resolve_device(name: str):
    """``auto`` -> cuda when present, else cpu; anything else as torch understands it."""
    import torch

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
