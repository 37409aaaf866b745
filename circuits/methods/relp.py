"""RelP (Jafari et al. 2025, "RelP: Faithful and Efficient Circuit Discovery via Relevance Patching"): EAP with
LRP's propagation coefficients in place of the gradients.

One clean forward+backward and one reference forward, as EAP.  The backward pass follows LRP's rules
(:class:`circuits.engine.rules.BackwardRules`):

- LN-rule: every norm's scale (standard deviation or RMS) is a constant; LayerNorm's centring stays;
- identity rule through the activation function: its derivative is replaced by ``act(x) / x``;
- half rule for multiplicative interactions: each factor of a product gets half the gradient, for
  the attention's ``q . k`` and ``pattern @ v`` (so q, k and v gradients are scaled by 1/4, 1/4 and
  1/2) and for a gated MLP's ``act(gate) * up`` (1/2 each).  The softmax itself keeps its gradient.

Each edge's score is then ``(reference[s] - clean[s]) . R_r`` with ``R_r`` the receiver's
propagation coefficient, as EAP's with the gradient.
"""
from __future__ import annotations

from typing import Optional

from circuits.methods.base import MethodOptions, Progress, Scores, no_progress
from circuits.methods.eap import integrated_scores
from circuits.engine.rules import BackwardRules

RELP_RULES = BackwardRules(freeze_norm=True, q_scale=0.25, k_scale=0.25, v_scale=0.5, gate_scale=0.5, up_scale=0.5,
                           act_identity=True)


class RelP:
    name = "relp"
    description = "RelP: EAP with LRP's rules (LN-rule, identity rule through activations, half rule for products)."
    granularity = "edge"
    cost = "one forward+backward, one reference forward (as EAP)"
    options = ()

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        return integrated_scores(engine, dataset, metric, options, steps=1, progress=progress or no_progress,
                                 method=self.name, rules=RELP_RULES)
