"""``circuits analyze TASK``: each task that owns an analysis (``task.analysis = "module:function"``, a
typer command function) gets a subcommand.

The tasks are looked up only when ``analyze`` itself is used (listed, helped or run), so every other
command starts without loading the task plugins.  The function's module should import nothing heavy
at module level (greater-than's: :mod:`circuits.tasks.greater_than_analysis.command`).
"""
from __future__ import annotations

import importlib
import warnings
from typing import Dict, Optional

import typer
from typer.core import TyperGroup

from circuits.cli import app
from circuits.registry import TASKS, PluginWarning, discover


def task_analyses() -> Dict[str, object]:
    """Task name -> its analysis command function, for every installed task that names one.  A broken task
    plugin is reported by the commands that use it, not here; an analysis that cannot be imported warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        tasks = discover(TASKS)
    found = {}
    for name, task in tasks.items():
        target = getattr(task, "analysis", None)
        if not target:
            continue
        try:
            module, _, attr = str(target).partition(":")
            found[name] = getattr(importlib.import_module(module), attr)
        except Exception as exc:  # a third-party task's analysis can fail in any way
            warnings.warn(f"task {name!r}: its analysis {target!r} failed to load: {exc}", PluginWarning, stacklevel=2)
    return found


class TaskAnalyses(TyperGroup):
    """The ``analyze`` group: its commands are the tasks' analyses, built the first time the group is used."""

    _loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for name, function in task_analyses().items():
            single = typer.Typer(add_completion=False)
            single.command(name)(function)
            self.add_command(typer.main.get_command(single), name)

    def list_commands(self, ctx):
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx, name: str) -> Optional[object]:
        self._load()
        return super().get_command(ctx, name)


analyze_app = typer.Typer(cls=TaskAnalyses, no_args_is_help=True,
                          help="Analyse a model (and a circuit alone) on a task: pictures, tables, report.html.")
app.add_typer(analyze_app, name="analyze")
