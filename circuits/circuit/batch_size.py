"""The automatic batch size (``--batch-size auto --max-memory 16GB``).

The batch is chosen from one measured probe: EAP's work on a few prompts (a reference run, a
traced clean run, its backward pass and the scores, the heaviest per-batch step of the
methods), whose peak memory growth per prompt is measured and scaled to the budget.  On the
CPU the growth is the process's resident-set high-water mark (``VmHWM``, reset before the
probe); on a GPU it is ``torch.cuda.max_memory_allocated``.  Batches use
:data:`BATCH_SHARE` of the budget; the rest is left to the references a faithfulness
evaluation keeps between passes (:data:`CACHE_SHARE`) and to what the estimate misses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from circuits.engine.memory import BATCH_SHARE, CACHE_SHARE, PROBE_PROMPTS, PeakMeter, default_budget
from circuits.methods.base import MethodOptions, no_progress
from circuits.methods.eap import integrated_scores


@dataclass(frozen=True)
class AutoBatch:
    """The batch ``--batch-size auto`` chose and how: the budget, the probe and its measured growth."""

    batch_size: int
    max_memory: int
    probe_prompts: int
    probe_growth: int
    bytes_per_prompt: int
    cache_bytes: int
    measured_by: str

    def manifest(self) -> Dict[str, Any]:
        return {"batch_size": self.batch_size, "max_memory_bytes": self.max_memory, "probe_prompts": self.probe_prompts,
                "probe_growth_bytes": self.probe_growth, "bytes_per_prompt": self.bytes_per_prompt,
                "reference_cache_bytes": self.cache_bytes, "measured_by": self.measured_by}


def auto_batch_size(engine, dataset, metric, *, max_memory: Optional[int] = None, ablation: str = "corrupted",
                    probe_prompts: int = PROBE_PROMPTS) -> AutoBatch:
    """The largest batch whose measured working memory fits :data:`BATCH_SHARE` of ``max_memory``."""
    budget = default_budget(engine.device) if max_memory is None else int(max_memory)
    k = max(1, min(probe_prompts, len(dataset)))
    probe = dataset.subset(slice(0, k))
    options = MethodOptions(ablation=ablation, batch_size=k)
    meter = PeakMeter(engine.device).start()
    integrated_scores(engine, probe, metric, options, steps=1, progress=no_progress, method="probe")
    growth = max(meter.growth(), 1)
    per_prompt = max(1, -(-growth // k))
    batch = max(1, min(len(dataset), int(BATCH_SHARE * budget) // per_prompt))
    return AutoBatch(batch_size=batch, max_memory=budget, probe_prompts=k, probe_growth=int(growth),
                     bytes_per_prompt=int(per_prompt), cache_bytes=int(CACHE_SHARE * budget), measured_by=meter.how)
