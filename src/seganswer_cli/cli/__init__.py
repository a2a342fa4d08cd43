"""The ``seganswer`` executable: one typer app, one module per command group.

Modules here are thin: parse, validate, print the resolved settings, call library code.
Nothing on the import path of this package imports torch, transformers, numpy or PIL, so
``seganswer --help`` stays instant (``bench/bench_help_time.py``); commands import them inside
their bodies.
"""

import os
import sys

import typer
from typer.core import TyperGroup

from seganswer_cli import __version__
from seganswer_cli.cli import data as data_cli
from seganswer_cli.cli import eval as eval_cli
from seganswer_cli.cli import infer as infer_cli
from seganswer_cli.cli import model as model_cli
from seganswer_cli.cli import plan as plan_cli
from seganswer_cli.cli import plot as plot_cli
from seganswer_cli.cli import train as train_cli
from seganswer_cli.errors import SegAnswerError

#: ``-h`` as well as ``--help``, for every command (subcommands inherit their parent's context).
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _readable(command, ctx) -> None:
    """Two changes to typer's (0.29) parameters of ``command`` and its subcommands, made once, when a
    command is looked up:

    - a repeatable parameter shows its element type in the help (``<path>...``, not ``<list[Path]>``);
    - the flags typer adds itself (``-h/--help``, ``--install-completion``) read False when absent,
      not None: coercing that None made every ``--help`` import pydantic (~80 ms) for nothing.
    """
    help_option = command.get_help_option(ctx)
    for param in [*getattr(command, "params", []), *([help_option] if help_option is not None else [])]:
        if getattr(param, "_readable", False) or not hasattr(param, "type_descriptor"):
            continue
        param._readable = True
        if getattr(param, "is_flag", False) and param.default is None and not param.expose_value:
            param.default = False  # typer's own flags only: a command never sees these values
        elif param.type_descriptor.is_list:
            shown = param.display_type_rich
            param.display_type_rich = lambda ctx, shown=shown: _element_type(shown(ctx=ctx))
    for sub in getattr(command, "commands", {}).values():
        _readable(sub, ctx)


def _element_type(label: str | None) -> str | None:
    """``<list[Path]>`` -> ``<path>...``; other labels unchanged."""
    if label and label.startswith("<list[") and label.endswith("]>"):
        return f"<{label[6:-2].lower()}>..."
    return label


class SegAnswerGroup(TyperGroup):
    """The root group: every command it resolves, and its own options, made ``_readable``."""

    def get_params(self, ctx):
        _readable(self, ctx)
        return super().get_params(ctx)

    def get_command(self, ctx, cmd_name):
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _readable(command, ctx)
        return command


app = typer.Typer(
    name="seganswer",
    cls=SegAnswerGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich panels cost ~0.1 s on every --help (bench_help_time.py)
    context_settings=CONTEXT_SETTINGS,
)
app.command("infer")(infer_cli.infer)
app.command("segment")(infer_cli.segment)
app.command("plot")(plot_cli.plot)
app.add_typer(model_cli.app, name="model")
app.add_typer(data_cli.app, name="data")
app.add_typer(eval_cli.app, name="eval")
app.command("pretrain-standin")(train_cli.pretrain_standin)
app.command("train-stage1")(train_cli.train_stage1)
app.command("merge-lora")(train_cli.merge_lora)
app.command("train-stage2")(train_cli.train_stage2)
app.command("train-stage3")(train_cli.train_stage3)
app.command("plan")(plan_cli.plan)


def _version(value: bool) -> None:
    if value:
        print(f"seganswer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Segmentation before Answering: segment the region of interest, look again, then answer.

    Every command has its own help: seganswer COMMAND -h.

    Example:

    \b
        seganswer infer examples/shapes-4.png "What shape is the smallest yellow shape?"
        seganswer eval shapes-vqa --out runs/shapes-vqa
        seganswer infer -h
    """


def os_error_line(e: OSError) -> str:
    """One line for an OS error that reached the command line: the path(s) and what the system said.

    >>> os_error_line(PermissionError(13, "Permission denied", "/data/run/metrics.jsonl"))
    '/data/run/metrics.jsonl: Permission denied'
    >>> os_error_line(OSError(28, "No space left on device"))
    'No space left on device'
    """
    what = e.strerror or " ".join(str(e).split())
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {what}" if paths else what


def main() -> None:
    """Console entry point: known errors become one line on stderr and a non-zero exit.

    typer/click handle usage errors themselves (exit 2 with the usage line); library errors
    (``SegAnswerError``) come out of the app and are printed here as one line, and so are OS errors
    (a full disk, a folder without permission: exit 1, the path named). ``SEGANSWER_DEBUG=1`` shows
    the traceback instead.
    """
    from rich.console import Console
    from rich.markup import escape

    err_console = Console(stderr=True)
    debug = os.environ.get("SEGANSWER_DEBUG", "") not in ("", "0")
    try:
        app()
    except SegAnswerError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except OSError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(os_error_line(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
