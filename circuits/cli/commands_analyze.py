"""``circuits analyze TASK``: each task that owns an analysis (``task.analysis = "module:function"``, a
typer command function) gets a subcommand.  The function is imported when the CLI starts, so it should
import nothing heavy at module level (greater-than's: :mod:`circuits.tasks.greater_than_analysis.command`).
"""
from __future__ import annotations

import importlib
import warnings

import typer

from circuits.cli import app
from circuits.registry import TASKS, PluginWarning, discover

analyze_app = typer.Typer(help="Analyse a model (and a circuit alone) on a task: pictures, tables, report.html.",
                          no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


def _register() -> None:
    with warnings.catch_warnings():  # a broken task plugin is reported by the commands that use it, not here
        warnings.simplefilter("ignore", PluginWarning)
        tasks = discover(TASKS)
    for name, task in tasks.items():
        target = getattr(task, "analysis", None)
        if not target:
            continue
        try:
            module, _, attr = str(target).partition(":")
            command = getattr(importlib.import_module(module), attr)
        except Exception as exc:  # a third-party task's analysis can fail in any way
            warnings.warn(f"task {name!r}: its analysis {target!r} failed to load: {exc}", PluginWarning, stacklevel=2)
            continue
        analyze_app.command(name)(command)


_register()
