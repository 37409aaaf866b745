"""The engine: the model's computational graph and the patched forward pass over its weights.

- ``graph.py``: the nodes (``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``), receivers and the dense
  ``[S, R]`` edge layout;
- ``engine.py``: :class:`GraphEngine`, one forward pass with edge patching, output collection and
  gradient tracing, and what a patch carries (:class:`Patch`, :class:`RestartBuffer`);
- ``ablation.py``: the reference values a patched edge carries (corrupted, mean, zero);
- ``architectures.py``: what each model family needs, what is refused, and the logit check;
- ``memory.py``: dtypes, memory budgets and peak-memory measurement.

``from circuits.engine import GraphEngine`` works as before; the names are loaded on first use,
so importing the graph alone does not import torch.
"""
from __future__ import annotations

from typing import Any

_ENGINE_NAMES = ("GraphEngine", "Patch", "RestartBuffer", "Trace", "RunResult", "RunOptions", "KVState", "Positions",
                 "ResidEdit", "PostEdit")


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from circuits.engine import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'circuits.engine' has no attribute {name!r}")


__all__ = list(_ENGINE_NAMES)
