"""Learned masks: the training loop Edge Pruning and UGS share.

A mask family (:class:`HardConcrete` for Edge Pruning, :class:`UniformGradient` for UGS) has one
parameter per unit (every valid edge, or every head and MLP for ``granularity node``) and turns it
into a sampled mask ``z`` in [0, 1], an expected number of kept units and a regulariser.  Each step
runs the engine over one piece of ``--batch-size`` prompts with ``keep[s, r] = z`` (a real-valued keep
that gradients flow into, :class:`circuits.engine.Patch`), so a receiver reads
``z * current + (1 - z) * reference``, and minimises

    faithfulness loss (KL from the full model, or the squared gap of the task metric) + regulariser

with Adam.  Pieces are visited in turn, so memory follows the batch; the pieces' references
(corrupted runs), full-model metric and empty-circuit metric are computed once and kept up to
``CACHE_BYTES`` (recomputed beyond).  The same seed gives the same masks: the noise comes from one
seeded CPU generator.

Scores: every unit's parameter, mapped monotonically onto (-inf, 0) by the family (a more negative
score: a unit more surely kept), so ``abs`` and ``signed`` rankings agree and both order by the
learned parameter.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from circuits.data.batching import batches

from circuits.engine.ablation import BatchReferences, static_reference
from circuits.engine.engine import Patch
from circuits.errors import CircuitsError
from circuits.methods.attribution import score_dtype
from circuits.methods.base import MethodOptions, Option, Progress, Scores

CACHE_BYTES = 256 << 20  # references and clean log-probabilities kept between steps (the rest recomputed)
INIT_SPAN = 3.0  # --init: parameters from +SPAN (first-ranked) down to -SPAN (ranked past twice the target)

# the options both methods declare
LOSS = Option("loss", str, "kl", "What the masked model is fitted to: kl (KL of its next-token distribution from the "
              "full model's at the answer positions) or task (squared gap of the --metric from the full model's).",
              choices=("kl", "task"))
INIT = Option("init", str, "none", "Start the mask parameters from a gradient method's ranking (eap or eap-ig: "
              "the top edges kept, the rest pruned) instead of all kept.", choices=("none", "eap", "eap-ig"))
GRANULARITY = Option("granularity", str, "edge", "What is masked: edge (every edge) or node (heads and MLPs whole; "
                     "the circuit is then chosen by node).", choices=("edge", "node"))
SEED = Option("mask_seed", int, 0, "Seed of the mask noise (the same seed gives the same circuit).")
STEPS = Option("steps", int, 300, "Optimisation steps (one batch of --batch-size prompts each).", minimum=1)
SHARED = (LOSS, INIT, GRANULARITY, SEED)
COST = "--steps masked forward+backward passes (about 2x EAP's each), plus 3 forwards per batch"  # both methods


@dataclass(frozen=True)
class Units:
    """What is masked: ``senders, receivers`` index the valid edges (edge masks), or ``senders`` the heads and MLPs
    (node masks: every outgoing edge of a unit shares its mask; ``input`` and ``logits`` are always kept)."""

    granularity: str
    senders: Tensor
    receivers: Optional[Tensor]

    @staticmethod
    def of(graph, granularity: str) -> "Units":
        if granularity == "node":
            return Units("node", torch.arange(1, graph.n_senders), None)
        edges = torch.tensor(graph.edges(), dtype=torch.long)
        return Units("edge", edges[:, 0], edges[:, 1])

    def __len__(self) -> int:
        return int(self.senders.shape[0])

    def keep(self, z: Tensor, graph, valid: Tensor) -> Tensor:
        """The [S, R] keep matrix of unit values ``z`` (differentiable)."""
        if self.granularity == "edge":
            keep = torch.zeros(graph.n_senders, graph.n_receivers, dtype=z.dtype, device=z.device)
            return keep.index_put((self.senders.to(z.device), self.receivers.to(z.device)), z)
        node = torch.cat([torch.ones(1, dtype=z.dtype, device=z.device), z])  # input always kept
        return node[:, None] * valid

    def scores(self, values: Tensor, graph) -> Tuple[Tensor, Dict[str, float]]:
        """Edge scores [S, R] (CPU) and node scores of per-unit ``values``."""
        values = values.detach().cpu().double()
        if self.granularity == "edge":
            out = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.float64)
            out[self.senders, self.receivers] = values
            return out, {}
        node = torch.cat([values.min().reshape(1) - 1.0, values])  # input: always kept, ranked first
        names = {graph.sender_names[s]: float(node[s]) for s in range(graph.n_senders)}
        return node[:, None].expand(-1, graph.n_receivers) * graph.valid_mask(), names


@dataclass(frozen=True)
class Settings:
    steps: int
    lr: float
    loss: str
    init: str
    seed: int
    granularity: str

    @staticmethod
    def of(values: Dict) -> "Settings":
        """From a method's checked option values (``option_values``)."""
        return Settings(steps=values["steps"], lr=values["lr"], loss=values["loss"], init=values["init"],
                        seed=values["mask_seed"], granularity=values["granularity"])


class _Piece:
    """One piece's fixed quantities: clean tokens on the device, the full model's metric, the empty circuit's
    metric (for the progress's f) and, for ``task`` loss, the full model's metric as the target."""

    def __init__(self, part, m_full: Tensor, m_empty: Tensor):
        self.part, self.m_full, self.m_empty = part, m_full, m_empty


class MaskTrainer:
    """Trains one family's mask parameters on ``dataset`` (see the module docstring); ``step()`` is one
    optimisation step over the next piece."""

    def __init__(self, engine, dataset, metric, options: MethodOptions, family, settings: Settings,
                 init_values: Optional[Tensor] = None):
        from circuits.methods.metrics import KLMetric

        self.engine, self.metric, self.family, self.settings = engine, metric, family, settings
        g = engine.graph
        self.units = Units.of(g, settings.granularity)
        self.valid = g.valid_mask(engine.device).to(engine.w.W_E.dtype)
        self.parts = batches(dataset, options.batch_size)
        means = static_reference(engine, dataset, options.ablation, batch_size=options.batch_size)
        self.refs = BatchReferences(engine, dataset, options.ablation, batch_size=options.batch_size,
                                    cache_bytes=CACHE_BYTES, means=means)
        self.kl = KLMetric(engine, dataset, batch_size=options.batch_size, cache_bytes=CACHE_BYTES) \
            if settings.loss == "kl" else None
        self.n = len(dataset)
        dtype = score_dtype(engine)
        start = family.initial(len(self.units)) if init_values is None else init_values
        self.theta = start.to(device=engine.device, dtype=dtype).clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.theta], lr=settings.lr)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.fixed: Dict[int, _Piece] = {}
        self.done = 0
        self.forward_passes = 0
        self.last: Dict[str, float] = {}

    # ------------------------------------------------------------------ pieces
    def _fixed(self, i: int, ref: Tensor) -> _Piece:
        if i not in self.fixed:
            part = self.parts[i]
            tokens = part.clean.to(self.engine.device)
            with torch.no_grad():
                full = self.metric(self.engine.run(tokens, part.answer_pos).logits, part).double()
                empty_keep = torch.zeros_like(self.valid)
                empty = self.metric(self.engine.run(tokens, part.answer_pos, patch=Patch(keep=empty_keep, reference=ref)).logits,
                                    part).double()
            self.forward_passes += 2
            self.fixed[i] = _Piece(part, full, empty)
        return self.fixed[i]

    # ------------------------------------------------------------------ one step
    def step(self) -> Dict[str, float]:
        i = self.done % len(self.parts)
        ref = self.refs.outputs(i)
        piece = self._fixed(i, ref)
        part = piece.part
        u = torch.rand(len(self.units), generator=self.generator, dtype=torch.float64)
        z = self.family.sample(self.theta, u.to(device=self.theta.device, dtype=self.theta.dtype))
        keep = self.units.keep(z.to(self.valid.dtype), self.engine.graph, self.valid)
        logits = self.engine.run(part.clean.to(self.engine.device), part.answer_pos,
                                 patch=Patch(keep=keep, reference=ref)).logits
        m = self.metric(logits, part)
        if self.kl is not None:
            fit = self.kl(logits, part).mean()
        else:
            fit = ((m.double() - piece.m_full.to(m.device)) ** 2).mean()
        expected = self.family.expected_kept(self.theta).sum()
        reg = self.family.regulariser(self.theta, expected, len(self.units), self.done, self.settings.steps)
        loss = fit + reg
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.family.after_step(self.done, self.settings.steps)
        self.forward_passes += 1
        self.done += 1
        with torch.no_grad():
            full, empty = float(piece.m_full.sum()), float(piece.m_empty.sum())
            f = (float(m.detach().double().sum()) - empty) / (full - empty) if full != empty else math.nan
        self.last = {"loss": float(loss.detach()), "fit": float(fit.detach()), "expected": float(expected.detach()),
                     "f": f if math.isfinite(f) else None}
        return self.last

    def train(self, progress: Progress, name: str) -> None:
        steps = self.settings.steps
        what = "edges" if self.settings.granularity == "edge" else "nodes"
        for _ in range(steps):
            r = self.step()
            progress(self.done, steps, f"{name}: step {self.done}/{steps}, loss {r['loss']:.4g}, "
                                       f"expected {what} {r['expected']:.1f}, f {_fmt(r['f'])}")

    # ------------------------------------------------------------------ result
    def scores(self, method: str, info: Dict) -> Scores:
        g = self.engine.graph
        values = self.family.score_values(self.theta.detach())
        edge, nodes = self.units.scores(values, g)
        info = {"steps": self.settings.steps, "final_loss": self.last.get("loss"), "final_fit": self.last.get("fit"),
                "final_f_batch": self.last.get("f"), "expected_kept": self.last.get("expected"),
                "init": self.settings.init, "loss": self.settings.loss, "lr": self.settings.lr,
                "mask_seed": self.settings.seed, "granularity": self.settings.granularity, "units": len(self.units),
                "forward_passes": self.forward_passes + self.refs.computed, "backward_passes": self.settings.steps,
                **info}
        return Scores(graph=g, method=method, edge_scores=edge.to(score_dtype(self.engine)).cpu(), node_scores=nodes,
                      info=info)


def _fmt(f: Optional[float]) -> str:
    return "n/a" if f is None else f"{f:.3f}"


def initial_from_method(engine, dataset, metric, options: MethodOptions, init: str, units: Units, keep_fraction: float,
                        progress: Progress) -> Tensor:
    """Parameters from ``init``'s ranking (by |score|; for node masks, a node's summed |score| of its edges): the
    first-ranked unit at +INIT_SPAN, the unit at ``keep_fraction`` of the ranking at 0, and -INIT_SPAN from twice that
    on."""
    from dataclasses import replace

    from circuits.registry import get_method

    method = get_method(init)
    scores = method.score(engine, dataset, metric, replace(options, params={}), progress=progress)
    edge = torch.as_tensor(scores.edge_scores).detach().cpu().double().abs()
    if units.granularity == "edge":
        values = edge[units.senders, units.receivers]
    else:
        values = edge.sum(1)[units.senders]
    order = torch.argsort(-values, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    q = rank.double() / max(1, len(order))  # 0 for the first-ranked unit
    fraction = min(max(keep_fraction, 1.0 / max(1, len(order))), 1.0)
    return (INIT_SPAN * (1.0 - q / fraction)).clamp(-INIT_SPAN, INIT_SPAN)


def check_steps(steps: int) -> None:
    if steps < 1:
        raise CircuitsError(f"--steps must be at least 1 (got {steps})")


def timed(fn: Callable[[], None]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
