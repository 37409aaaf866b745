"""Edge Pruning (Bhaskar, Wettig, Friedman & Chen, NeurIPS 2024), on the graph engine.

Every edge (or, with ``--granularity node``, every head and MLP) gets a hard-concrete (L0) mask
(Louizos et al. 2018): ``z = clamp(l + (r - l) * sigmoid((log u - log(1 - u) + log_alpha) / beta), 0, 1)``
with the paper's stretch ``[l, r] = [-0.1, 1.1]`` and temperature ``beta = 2/3``, ``u`` uniform.  The
probability that a mask is non-zero is ``sigmoid(log_alpha - beta * log(-l / r))``; their sum is the
expected number of kept edges, and ``1 - expected / edges`` the model's expected sparsity ``s``.

The loss is the masked model's faithfulness to the full one (KL of the next-token distributions at
the answer positions by default; ``--loss task``: the squared gap of the metric) plus the Lagrangian
``lambda1 * (s - t) + lambda2 * (s - t)^2``, whose multipliers rise by gradient ascent while the masks
descend, so the expected sparsity is driven to the target ``t``.  ``t`` rises linearly from the start's
sparsity to ``--target-sparsity`` over the first half of the steps (the paper: 2,500 of 3,000).

Scores: ``-softplus(log_alpha)`` (negative, decreasing in ``log_alpha``: both rankings order by the learned
logit).  The method's own binary circuit, the threshold on ``log_alpha`` that keeps exactly
``round((1 - t) * edges)`` edges, is ``extra["kept_mask"]`` (``info["kept_at_target"]`` edges); ``discover``'s
selection modes work on the scores as for any method.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from circuits.methods.base import MethodOptions, Option, Progress, Scores, no_progress, option_values
from circuits.methods.masks import COST, SHARED, STEPS, MaskTrainer, Settings, Units, initial_from_method

LEFT, RIGHT, BETA = -0.1, 1.1, 2.0 / 3.0  # the paper's stretch and temperature
INIT_LOG_ALPHA, INIT_STD = 10.0, 0.01  # the paper's start: every edge kept
WARMUP = 0.5  # fraction of the steps over which the target sparsity rises
EPS = 1e-6


class HardConcrete:
    """Hard-concrete masks and the Lagrangian sparsity term (multipliers trained by ascent)."""

    def __init__(self, target: float, lr: float, seed: int, start: float = 0.0):
        self.target, self.start, self.seed = target, start, seed
        self.lambdas = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        self.ascent = torch.optim.Adam([self.lambdas], lr=lr, maximize=True)
        self.current = start

    def initial(self, n: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed + 1)
        return INIT_LOG_ALPHA + INIT_STD * torch.randn(n, generator=g, dtype=torch.float64)

    @staticmethod
    def sample(log_alpha: Tensor, u: Tensor) -> Tensor:
        u = u.clamp(EPS, 1 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
        return (s * (RIGHT - LEFT) + LEFT).clamp(0.0, 1.0)

    @staticmethod
    def expected_kept(log_alpha: Tensor) -> Tensor:
        return torch.sigmoid(log_alpha - BETA * math.log(-LEFT / RIGHT))

    def target_at(self, step: int, steps: int) -> float:
        ramp = max(1.0, WARMUP * steps)
        return self.start + (self.target - self.start) * min(1.0, step / ramp)

    def regulariser(self, log_alpha: Tensor, expected: Tensor, n: int, step: int, steps: int) -> Tensor:
        self.current = self.target_at(step, steps)
        gap = (1.0 - expected / n) - self.current
        lam = self.lambdas.to(gap.device)
        return lam[0] * gap + lam[1] * gap ** 2

    def after_step(self, step: int, steps: int) -> None:
        self.ascent.step()
        self.ascent.zero_grad(set_to_none=True)

    @staticmethod
    def score_values(log_alpha: Tensor) -> Tensor:
        return -F.softplus(log_alpha.double())


class EdgePruning:
    name = "edge-pruning"
    description = ("Edge Pruning (Bhaskar et al. 2024): hard-concrete masks on every edge, fitted to the full model "
                   "under a Lagrangian sparsity target; scores are the learned mask logits.")
    granularity = "edge"
    cost = COST
    options = (
        Option("target_sparsity", float, 0.95, "Fraction of the edges (nodes) the masks are driven to remove.",
               minimum=0.0, maximum=1.0),
        STEPS,
        Option("lr", float, 0.1, "Adam's learning rate for the mask logits and the Lagrange multipliers.", minimum=0.0),
        *SHARED,
    )

    def score(self, engine, dataset, metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        progress = progress or no_progress
        p = option_values(self, options.params)
        settings = Settings.of(p)
        family = HardConcrete(p["target_sparsity"], p["lr"], p["mask_seed"])
        start = None
        units = Units.of(engine.graph, settings.granularity)
        if settings.init != "none":
            start = initial_from_method(engine, dataset, metric, options, settings.init, units,
                                        1.0 - p["target_sparsity"], progress)
            family.start = family.current = 1.0 - float(HardConcrete.expected_kept(start).sum()) / len(units)
        trainer = MaskTrainer(engine, dataset, metric, options, family, settings, init_values=start)
        trainer.train(progress, self.name)
        k = int(round((1.0 - p["target_sparsity"]) * len(units)))
        scores = trainer.scores(self.name, {"target_sparsity": p["target_sparsity"], "kept_at_target": k,
                                            "ablation": options.ablation,
                                            "lambdas": [float(x) for x in family.lambdas.detach()]})
        return _with_own_circuit(scores, units, trainer.theta.detach().cpu(), k)


def _with_own_circuit(scores: Scores, units: Units, log_alpha: Tensor, k: int) -> Scores:
    """``scores`` with ``extra["kept_mask"]``: the ``k`` units of largest ``log_alpha`` (ties: compute order)."""
    from dataclasses import replace

    from circuits.circuit.ranking import node_mask

    graph = scores.graph
    order = torch.argsort(-log_alpha, stable=True)[:k]
    if units.granularity == "edge":
        mask = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.bool)
        mask[units.senders[order], units.receivers[order]] = True
    else:
        mask = node_mask(graph, units.senders[order])
    return replace(scores, extra={**scores.extra, "kept_mask": mask})
