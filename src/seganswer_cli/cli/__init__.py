"""The ``seganswer`` executable: one typer app, one module per command group.

Modules here are thin: parse, validate, print the resolved settings, call library code.
Nothing on the import path of this package imports torch or transformers, so
``seganswer --help`` stays instant; commands import them inside their bodies.
"""

import os
import sys

import typer
from rich.console import Console

from seganswer_cli import __version__
from seganswer_cli.cli import data as data_cli
from seganswer_cli.cli import eval as eval_cli
from seganswer_cli.cli import infer as infer_cli
from seganswer_cli.cli import model as model_cli
from seganswer_cli.cli import plan as plan_cli
from seganswer_cli.cli import plot as plot_cli
from seganswer_cli.cli import train as train_cli
from seganswer_cli.errors import SegAnswerError

err_console = Console(stderr=True)

app = typer.Typer(
    name="seganswer",
    help="Segmentation before Answering: segment the region of interest, look again, then answer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
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
    """Segmentation before Answering: segment the region of interest, look again, then answer."""


def main() -> None:
    """Console entry point: known errors become one line on stderr and a non-zero exit.

    typer/click handle usage errors themselves (exit 2 with the usage line); library errors
    (``SegAnswerError``) come out of the app and are printed here as one line.
    """
    debug = os.environ.get("SEGANSWER_DEBUG", "") not in ("", "0")
    try:
        app()
    except SegAnswerError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
