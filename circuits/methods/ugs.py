"""UGS: continuous edge masks trained by uniform gradient sampling, MIB's learned-mask baseline
(from Li & Janson, "Optimal ablation for interpretability", NeurIPS 2024).

Each edge (or head and MLP, ``--granularity node``) has a logit ``theta`` and a keep probability
``p = sigmoid(theta)``.  A step draws ``u`` uniform per edge and keeps the edge with the mask
``m = clamp((p - u) / w + 1/2, 0, 1)``: 1 when ``u < p - w/2``, 0 when ``u > p + w/2``, linear in a
window of width ``w = p (1 - p)`` around ``p``.  So the masks are mostly Bernoulli(p) samples, and an
edge receives gradient only on the steps its ``u`` falls in its window (with slope 1 in ``p``: the
window is rescaled so the gradient does not grow as it narrows).  The loss is the faithfulness loss
(KL from the full model by default) plus ``--sparsity-weight`` times the expected number of kept edges,
``sum p``.  The mask values ``p`` are the scores (as ``-p``: negative, more negative for a surer edge).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from circuits.methods.base import MethodOptions, Option, Progress, Scores, no_progress, option_values
from circuits.methods.masks import COST, SHARED, STEPS, MaskTrainer, Settings, Units, initial_from_method

INIT_LOGIT = 2.0  # p = 0.88: mostly kept, with a window wide enough to learn from
MIN_WINDOW = 1e-6


class UniformGradient:
    """UGS masks: Bernoulli-like samples with a gradient window; a linear penalty on the expected edges."""

    def __init__(self, lam: float):
        self.lam = lam

    @staticmethod
    def initial(n: int) -> Tensor:
        return torch.full((n,), INIT_LOGIT, dtype=torch.float64)

    @staticmethod
    def sample(theta: Tensor, u: Tensor) -> Tensor:
        p = torch.sigmoid(theta)
        w = (p * (1 - p)).detach().clamp_min(MIN_WINDOW)
        scaled = w * p - (w - 1) * p.detach()  # value p, gradient w: the window's 1/w is cancelled
        return ((scaled - u) / w + 0.5).clamp(0.0, 1.0)

    @staticmethod
    def expected_kept(theta: Tensor) -> Tensor:
        return torch.sigmoid(theta)

    def regulariser(self, theta: Tensor, expected: Tensor, n: int, step: int, steps: int) -> Tensor:
        return self.lam * expected

    def after_step(self, step: int, steps: int) -> None:
        pass

    @staticmethod
    def score_values(theta: Tensor) -> Tensor:
        return -torch.sigmoid(theta.double())


class UGS:
    name = "ugs"
    description = ("UGS (uniform gradient sampling; Li & Janson 2024), MIB's mask baseline: continuous edge masks "
                   "under a sparsity penalty; scores are the mask values.")
    granularity = "edge"
    cost = COST
    options = (
        Option("sparsity_weight", float, 1e-3, "Weight of the sparsity penalty: the weight x the expected number of kept edges.",
               minimum=0.0),
        STEPS,
        Option("lr", float, 0.1, "Adam's learning rate for the mask logits.", minimum=0.0),
        *SHARED,
    )

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        progress = progress or no_progress
        p = option_values(self, options.params)
        settings = Settings.of(p)
        start = None
        if settings.init != "none":
            units = Units.of(engine.graph, settings.granularity)
            start = initial_from_method(engine, dataset, metric, options, settings.init, units, 0.05, progress)
        trainer = MaskTrainer(engine, dataset, metric, options, UniformGradient(p["sparsity_weight"]), settings, init_values=start)
        trainer.train(progress, self.name)
        return trainer.scores(self.name, {"sparsity_weight": p["sparsity_weight"], "target_sparsity": None, "ablation": options.ablation})
