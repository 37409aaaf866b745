"""The command line: thin typer commands over the library.

This package is the only place that prints for users or chooses exit codes.
torch and TransformerLens are imported inside commands, so ``circuits --help`` is quick.
Each sub-module adds its commands to ``app``.
"""
from __future__ import annotations

import sys

import typer

from circuits import __version__
from circuits.errors import CircuitsError

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


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print a one-line error to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _register() -> None:
    """Import the command modules; each adds its commands to ``app``."""
    from circuits.cli import (  # noqa: F401
        commands_agreement, commands_analyze, commands_core, commands_discover, commands_graphs, commands_reference,
    )
    from circuits.cli import commands_serve  # noqa: F401


def main() -> None:
    _register()
    try:
        app()
    except CircuitsError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
