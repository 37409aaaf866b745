"""``circuits analyze TASK``: each task that owns an analysis (``task.analysis = "module:attribute"``: a
:class:`circuits.jobs.Job`, or a typer command function) gets a subcommand.

The tasks are looked up only when ``analyze`` itself is used (listed, helped or run), so every other
command starts without loading the task plugins.  The function's module should import nothing heavy
at module level (greater-than's: :mod:`circuits.tasks.greater_than_analysis.command`).
"""
from __future__ import annotations

from typing import Optional

import typer
from typer.core import TyperGroup

from circuits.cli.app import app
from circuits.cli.jobs import job_command
from circuits.jobs import Job, task_analyses


class TaskAnalyses(TyperGroup):
    """The ``analyze`` group: its commands are the tasks' analyses, built the first time the group is used."""

    _loaded = False

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for name, function in task_analyses().items():
            single = typer.Typer(add_completion=False)
            if isinstance(function, Job):
                job_command(single, function)
            else:
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
