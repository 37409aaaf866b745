"""EAP with integrated gradients on the inputs (Hanna, Pezzelle & Belinkov 2024).

The receiver gradients are averaged over ``ig_steps`` points ``alpha = k / steps`` (k = 1..steps)
on the straight line from the reference (corrupted or mean) input embedding to the clean one;
the sender deltas are those of the clean and reference runs, as in EAP.
"""
from __future__ import annotations

from typing import Optional

from circuits.errors import CircuitsError
from circuits.methods.eap import integrated_scores
from circuits.scores import MethodOptions, Progress, Scores, no_progress


class EAPIG:
    name = "eap-ig"
    description = "EAP with integrated gradients on the input embeddings (default 5 steps)."
    granularity = "edge"
    cost = "--ig-steps forward+backward passes, one reference forward"

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        if options.ig_steps < 1:
            raise CircuitsError(f"--ig-steps must be at least 1 (got {options.ig_steps})")
        return integrated_scores(engine, dataset, metric, options, steps=options.ig_steps,
                                 progress=progress or no_progress, method=self.name)
