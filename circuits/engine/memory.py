"""Memory budgets, dtypes and peak-memory measurement.

:class:`PeakMeter` measures the growth of the process's resident-set high-water mark (``VmHWM``) on
the CPU, or ``torch.cuda.max_memory_allocated`` on a GPU; ``circuits.circuit.batch_size`` uses it to
choose ``--batch-size auto``, with :data:`BATCH_SHARE` of the budget for one batch and
:data:`CACHE_SHARE` for the references a faithfulness evaluation keeps between passes.
"""
from __future__ import annotations

import gc
import re
from typing import Any, Dict, Optional, Union

import torch

from circuits.errors import CircuitsError

PROBE_PROMPTS = 8
BATCH_SHARE = 0.6  # of the budget, for one batch's working memory
CACHE_SHARE = 0.2  # of the budget, for references kept between faithfulness passes
FREE_SHARE = 0.8  # default budget: this share of the free RAM or GPU memory
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
          "t": 10 ** 12, "tb": 10 ** 12, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_dtype(name: str) -> torch.dtype:
    """``float32``, ``bfloat16`` or ``float16`` -> the torch dtype (a one-line error otherwise)."""
    if name not in DTYPES:
        raise CircuitsError(f"--dtype must be one of {', '.join(DTYPES)} (got {name!r})")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def parse_memory(text: str) -> int:
    """``16GB``, ``4GiB``, ``512MB``, ``1e9`` -> bytes (decimal units; ``GiB`` and friends binary)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise CircuitsError(f"--max-memory takes a size like 16GB, 4GiB or 512MB (got {text!r})")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_batch_size(text: Union[str, int]) -> Optional[int]:
    """``--batch-size``: a whole number >= 0 (0: all at once), or ``auto`` (returned as None)."""
    if str(text).strip().lower() == "auto":
        return None
    try:
        value = int(str(text))
    except ValueError:
        value = -1
    if value < 0:
        raise CircuitsError(f"--batch-size must be 0 (all prompts), a number of prompts or auto (got {text!r})")
    return value


def free_memory(device: Union[str, torch.device]) -> int:
    """Free bytes on ``device``: available RAM for the CPU, free GPU memory for CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        kb = proc_field_kb("MemAvailable")
        if kb is None:
            raise CircuitsError("cannot tell the free memory on this machine; pass --max-memory")
        return kb * 1024


def default_budget(device) -> int:
    """The default ``--max-memory``: most (:data:`FREE_SHARE`) of the free memory."""
    return int(FREE_SHARE * free_memory(device))


def proc_field_kb(field: str, path: str = "/proc/meminfo") -> Optional[int]:
    """A kB field of a /proc file (MemAvailable of /proc/meminfo, VmHWM of /proc/self/status), or None."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMeter:
    """Peak memory growth of the code between ``start()`` and ``growth()`` (bytes)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.before = 0
        self.how = ""

    def start(self) -> "PeakMeter":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
            self.how = "torch.cuda.max_memory_allocated"
            return self
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the resident-set high-water mark to the current resident set
        except OSError:
            raise CircuitsError("--batch-size auto needs Linux's /proc/self/clear_refs on the CPU; pass a number instead")
        self.before = 1024 * (proc_field_kb("VmRSS", "/proc/self/status") or 0)
        self.how = "resident-set high-water mark (VmHWM)"
        return self

    @classmethod
    def try_start(cls, device) -> Optional["PeakMeter"]:
        """A started meter, or None where the platform cannot measure (no /proc/self/clear_refs)."""
        try:
            return cls(device).start()
        except CircuitsError:
            return None

    def report(self) -> Dict[str, Any]:
        """For the manifest: memory in use when the meter started and the peak growth since."""
        return {"start_bytes": self.before, "peak_growth_bytes": self.growth(), "measured_by": self.how}

    def growth(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device)) - self.before
        return 1024 * (proc_field_kb("VmHWM", "/proc/self/status") or 0) - self.before
