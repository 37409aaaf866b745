"""Find tasks and methods: entry points (``circuits.tasks``, ``circuits.methods``) and ``--task-file``.

Built-ins register through the same entry points as third-party plugins.  A plugin that
fails to load is reported as a warning naming it; the others still work.
"""
from __future__ import annotations

import importlib.util
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Dict

from circuits.errors import CircuitsError

TASKS = "circuits.tasks"
METHODS = "circuits.methods"


class PluginWarning(UserWarning):
    """A plugin could not be loaded."""


def _instantiate(obj: Any) -> Any:
    return obj() if isinstance(obj, type) else obj


def plugins(group: str) -> Dict[str, Any]:
    """Load every plugin of ``group``: name -> instance.  Broken plugins warn and are skipped."""
    found: Dict[str, Any] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            found[ep.name] = _instantiate(ep.load())
        except Exception as exc:  # a third-party plugin can fail in any way
            warnings.warn(f"plugin {ep.name!r} ({ep.value}) in {group} failed to load: {exc}", PluginWarning, stacklevel=2)
    return found


def get(group: str, name: str, kind: str) -> Any:
    found = plugins(group)
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise CircuitsError(f"unknown {kind} {name!r}; known {kind}s: {known}")
    return found[name]


def get_task(name: str) -> Any:
    return get(TASKS, name, "task")


def get_method(name: str) -> Any:
    return get(METHODS, name, "method")


def load_task_file(path: Path) -> Any:
    """Load a task from a local Python file: its ``TASK`` object, or its single ``Task`` subclass/instance."""
    path = Path(path)
    if not path.is_file():
        raise CircuitsError(f"task file not found: {path}; pass the path of a .py file that defines TASK")
    spec = importlib.util.spec_from_file_location(f"circuits_task_file_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise CircuitsError(f"task file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    if hasattr(module, "TASK"):
        return _instantiate(module.TASK)
    candidates = [v for v in vars(module).values() if hasattr(v, "build") and hasattr(v, "metric") and getattr(v, "__module__", None) == module.__name__]
    if len(candidates) != 1:
        raise CircuitsError(f"task file {path} must define TASK (a task object or class) with build() and metric()")
    return _instantiate(candidates[0])


discover = plugins  # the old name, kept for one release (CHANGELOG: Deprecated)
