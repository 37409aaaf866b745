"""GIM (Edin et al. 2025, "GIM: Improved Interpretability for Large Language Models"): EAP with GIM's backward pass.

One clean forward+backward and one reference forward, as EAP; only the backward pass changes
(:class:`circuits.engine.rules.BackwardRules`):

- the norms' statistics are frozen (no gradient through the standard deviation or RMS);
- the attention softmax's gradient is taken at temperature T (default 2): ``s_T * (g - <g, s_T>)``
  with ``s_T = softmax(scores / T)``;
- the gradients of the queries, keys and values are scaled by 1/4, 1/4 and 1/2, and, in gated MLPs,
  those of the gate and up branches by 1/2 each (the ``gim-explain`` package's defaults).

The temperature applies to the attention softmax only, not to a softmax inside the task's metric.
"""
from __future__ import annotations

from typing import Optional, Tuple

from circuits.errors import CircuitsError
from circuits.methods.base import MethodOptions, Option, Progress, Scores, no_progress, option_values
from circuits.methods.eap import integrated_scores
from circuits.engine.rules import BackwardRules


def parse_scales(text: str, n: int, flag: str) -> Tuple[float, ...]:
    """``"0.25,0.25,0.5"`` -> (0.25, 0.25, 0.5), ``n`` numbers or a one-line error naming ``flag``."""
    try:
        values = tuple(float(x) for x in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != n:
        raise CircuitsError(f"{flag} takes {n} comma-separated numbers, like {','.join(['0.5'] * n)} (got {text!r})")
    return values


class GIM:
    name = "gim"
    description = "GIM: EAP with frozen norm statistics, softmax gradients at temperature 2 and scaled q/k/v gradients."
    granularity = "edge"
    cost = "one forward+backward, one reference forward (as EAP)"
    options = (
        Option("gim_temperature", float, 2.0, "gim: the temperature of the attention softmax's gradient.", minimum=1e-6),
        Option("gim_qkv_scale", str, "0.25,0.25,0.5", "gim: the factors of the query, key and value gradients."),
        Option("gim_gate_up_scale", str, "0.5,0.5", "gim: the factors of a gated MLP's gate and up gradients."),
        Option("gim_freeze_norm", bool, True, "gim: no gradient through the norms' statistics."),
    )

    def rules(self, params) -> BackwardRules:
        own = option_values(self, params)
        q, k, v = parse_scales(own["gim_qkv_scale"], 3, "--gim-qkv-scale")
        gate, up = parse_scales(own["gim_gate_up_scale"], 2, "--gim-gate-up-scale")
        return BackwardRules(freeze_norm=own["gim_freeze_norm"], softmax_temperature=own["gim_temperature"],
                             q_scale=q, k_scale=k, v_scale=v, gate_scale=gate, up_scale=up)

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        return integrated_scores(engine, dataset, metric, options, steps=1, progress=progress or no_progress,
                                 method=self.name, rules=self.rules(options.params))
