"""EAP with integrated gradients on the inputs (Hanna, Pezzelle & Belinkov 2024).

The receiver gradients are averaged over ``ig_steps`` points ``alpha = k / steps`` (k = 1..steps)
on the straight line from the reference (corrupted or mean) input embedding to the clean one;
the sender deltas are those of the clean and reference runs, as in EAP.
"""
from __future__ import annotations

from typing import Optional

from circuits.methods.eap import integrated_scores
from circuits.methods.base import MethodOptions, Option, Progress, Scores, no_progress, option_values


class EAPIG:
    name = "eap-ig"
    description = "EAP with integrated gradients on the input embeddings (default 5 steps)."
    granularity = "edge"
    cost = "--ig-steps forward+backward passes, one reference forward"
    options = (Option("ig_steps", int, 5, "Integration steps: points on the line from the reference input to the clean one.", minimum=1),)

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        steps = option_values(self, options.params)["ig_steps"]
        return integrated_scores(engine, dataset, metric, options, steps=steps,
                                 progress=progress or no_progress, method=self.name)
