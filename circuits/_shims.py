"""Old module paths kept importable for one release (see CHANGELOG.md, "Moved").

``import circuits.scores`` gives the module now at ``circuits.methods.base``: the same module
object, so attributes set on one are seen through the other.  The table is the only place that
knows the old names; nothing in the package imports through them.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "circuits.scores": "circuits.methods.base",
    "circuits.graph": "circuits.engine.graph",
    "circuits.ablation": "circuits.engine.ablation",
    "circuits.memory": "circuits.engine.memory",
    "circuits.models.support": "circuits.engine.architectures",
    "circuits.dataset": "circuits.data.dataset",
    "circuits.task": "circuits.data.task",
    "circuits.evaluation": "circuits.data.evaluation",
    "circuits.ranking": "circuits.circuit.ranking",
    "circuits.select": "circuits.circuit.select",
    "circuits.faithfulness": "circuits.circuit.faithfulness",
    "circuits.neurons": "circuits.circuit.neurons",
    "circuits.discover": "circuits.circuit.discover",
    "circuits.run_folder": "circuits.circuit.run_folder",
    "circuits.metrics": "circuits.methods.metrics",
    "circuits.benchmark": "circuits.bench.benchmark",
    "circuits.stability": "circuits.circuit.stability",
    "circuits.spans": "circuits.data.spans",
    "circuits.positions": "circuits.circuit.positions",
    "circuits.positions_folder": "circuits.circuit.positions_folder",
    "circuits.rules": "circuits.engine.rules",
    "circuits.agreement": "circuits.bench.agreement",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # the target module is already executed
        pass


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds an old module name and hands back the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(AliasFinder())
