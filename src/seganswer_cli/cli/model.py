"""``seganswer model ...``: build model folders from presets and describe them."""

import typer

app = typer.Typer(help="Model folders: create one from a preset, describe one.", no_args_is_help=True)
