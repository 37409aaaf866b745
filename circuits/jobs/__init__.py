"""The library's jobs: what ``circuits evaluate``, ``discover`` and ``evaluate-circuit`` do, as
functions that the CLI and the service both call.

A :class:`Job` declares its options (:class:`circuits.options.Option`), runs from checked values
with a progress callback and a model loader, and returns a JSON-able result; ``present`` turns that
result into the lines the CLI prints.  The CLI's flags (``circuits.cli.jobs``) and the service's
fields and validation (``circuits.service.jobs``) are both made from the declarations, so neither
door builds the other's command line.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Dict

from circuits.jobs.base import Job, Report, check_values, command_line

__all__ = ["Job", "Report", "check_values", "command_line", "jobs", "task_analyses", "analysis_jobs"]


def jobs() -> Dict[str, Job]:
    """Every job by name (the CLI commands that the service also runs)."""
    from circuits.jobs.discover import DISCOVER
    from circuits.jobs.evaluate import EVALUATE
    from circuits.jobs.evaluate_circuit import EVALUATE_CIRCUIT

    return {job.name: job for job in (DISCOVER, EVALUATE, EVALUATE_CIRCUIT)}


def task_analyses() -> Dict[str, Any]:
    """Task name -> its analysis (a :class:`Job`, or a plain typer command function, which only the CLI
    runs), for every installed task that names one (``task.analysis = "module:attribute"``).  A broken
    task plugin is reported by the commands that use it, not here; an analysis that cannot be imported
    warns (``PluginWarning``)."""
    from circuits.registry import TASKS, PluginWarning, plugins

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        tasks = plugins(TASKS)
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


def analysis_jobs() -> Dict[str, Job]:
    """The task analyses that are jobs (the ones the service can run)."""
    return {name: a for name, a in task_analyses().items() if isinstance(a, Job)}
