"""The command line: thin typer commands over the library.

This package is the only place that prints for users or chooses exit codes.
torch and TransformerLens are imported inside commands, so ``circuits --help`` is quick.
Each sub-module adds its commands to ``app``.
"""
from __future__ import annotations

import sys

import typer

from circuits.cli.app import app
from circuits.errors import CircuitsError

__all__ = ["app", "main", "fail"]


def fail(message: str, code: int = 2) -> "typer.Exit":
    """Print a one-line error to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _register() -> None:
    """Import the command modules; each adds its commands to ``app``."""
    from circuits.cli import (  # noqa: F401
        commands_agreement, commands_analyze, commands_benchmark, commands_core, commands_discover, commands_graphs,
        commands_reference,
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
