"""``seganswer data ...``: synthesize the shapes world, inspect datasets."""

import typer

app = typer.Typer(help="Data preparation: the shapes world and readers for the published formats.", no_args_is_help=True)
