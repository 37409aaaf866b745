"""``circuits tasks list``, ``circuits methods list`` and ``circuits evaluate``."""
from __future__ import annotations

import warnings

import typer

from circuits.cli.app import app
from circuits.cli.jobs import job_command
from circuits.jobs.evaluate import EVALUATE
from circuits.registry import PluginWarning

_show_warning = warnings.showwarning


def _show_plugin_warning(message, category, filename, lineno, file=None, line=None):
    """A plugin that fails to load is one line on stderr (``warning: plugin 'x' ...``), not a source excerpt."""
    if issubclass(category, PluginWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _show_plugin_warning

tasks_app = typer.Typer(help="List the tasks that are installed.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")

methods_app = typer.Typer(help="List the scoring methods that are installed.", no_args_is_help=True)
app.add_typer(methods_app, name="methods")

@tasks_app.command("list")
def tasks_list() -> None:
    """List installed tasks (built-ins and plugins from the circuits.tasks entry point)."""
    from circuits.registry import TASKS, plugins

    for name, task in plugins(TASKS).items():
        typer.echo(f"{name}\t{getattr(task, 'description', '')}")


@methods_app.command("list")
def methods_list() -> None:
    """List installed scoring methods: name, granularity (edge or node) and cost, one line each."""
    from circuits.registry import METHODS, plugins

    for name, method in plugins(METHODS).items():
        typer.echo(f"{name}\t{getattr(method, 'granularity', 'edge')}\t{getattr(method, 'cost', '')}")


job_command(app, EVALUATE)
