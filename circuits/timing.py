"""Seconds per step of a long job, recorded as the steps run (a run's ``timings``)."""
from __future__ import annotations

import time
from typing import Callable, Dict, TypeVar

T = TypeVar("T")


class Timer:
    """``timer(name, fn)`` runs ``fn`` and records its seconds under ``name`` in ``timer.timings``."""

    def __init__(self) -> None:
        self.timings: Dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], T]) -> T:
        t = time.perf_counter()
        out = fn()
        self.timings[name] = time.perf_counter() - t
        return out
