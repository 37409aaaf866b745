"""The typer application every command module adds its commands to."""
from __future__ import annotations

import typer

from circuits import __version__

app = typer.Typer(
    name="circuits",
    help="Find the circuits behind a language model's behaviour: score components and edges, "
    "keep a faithful circuit, and export it as DOT, JSON and SVG.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"circuits {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """circuits: circuit discovery for language models."""
