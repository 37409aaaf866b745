"""What scoring methods return, and the options they take."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

from circuits.graph import ComputationalGraph

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from circuits.dataset import PromptDataset

# progress(step_done, steps_total, message): long methods call it; the CLI draws a bar.
Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str) -> None:
    """The default progress callback: ignore."""


DEFAULT_MAX_PASSES = 800  # path patching: about 20 min for SmolLM2-135M, greater-than n = 50, on a 2-core CPU
VERIFY_AUTO_EDGES = 64  # target-faithfulness circuits up to this size are verified by patching unless told not to
VERIFY_TOLERANCE = 1e-3  # of |m_full - m_empty|: the most verification may move the circuit's metric


@dataclass(frozen=True)
class MethodOptions:
    """Options shared by the scoring methods (each uses the ones that apply to it).

    ablation: one of ``circuits.ablation.ABLATIONS``: ``corrupted`` (counterfactual: the corrupted
        prompts' activations), ``mean`` (the clean activations' mean over the prompts, per position),
        ``mean-positions`` (their mean over the prompts and the positions) or ``zero``.
    ig_steps: integration steps of EAP-IG.
    neurons: MLP layers whose neurons are scored, e.g. ``("m10", "m11")``.
    top_neurons: how many neurons per MLP to report.
    threshold: path patching's recursion threshold, as a fraction of the full effect
        ``|m(clean) - m(corrupted)|``: senders whose edge effect is smaller are not explored.
    max_passes: path patching's budget of patched forward passes (each over every prompt); the
        search stops there and reports ``info["complete"] = False``.
    batch_size: prompts per forward pass (0: all at once).
    tau: ACDC's threshold: an edge whose patching moves the mean metric by less than ``tau`` is removed.
    acdc_order: ACDC's sender order within a receiver: ``reverse`` (latest sender first, as ACDC's
        code) or ``normal`` (compute order).
    max_tests: ACDC stops after this many edge tests (0: no limit).
    """

    ablation: str = "corrupted"
    ig_steps: int = 5
    neurons: Tuple[str, ...] = ()
    top_neurons: int = 10
    threshold: float = 0.02
    max_passes: int = DEFAULT_MAX_PASSES
    batch_size: int = 0
    tau: float = 0.01
    acdc_order: str = "reverse"
    max_tests: int = 0


@dataclass(frozen=True)
class Scores:
    """A method's result.

    edge_scores: [senders, receivers] float tensor: the estimated change of the mean metric when
        the edge is patched (negative: the edge helps the behaviour).  Invalid or unscored entries are 0.
    node_scores: node name -> score (activation patching; others may leave it empty).
    neuron_scores: MLP name -> [(neuron index, score), ...], strongest first.
    extra: method-specific tables (e.g. residual-stream scores per layer and position).
    info: counts and settings (e.g. ``forward_passes``).
    """

    graph: ComputationalGraph
    method: str
    edge_scores: Any
    node_scores: Mapping[str, float] = field(default_factory=dict)
    neuron_scores: Mapping[str, List[Tuple[int, float]]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)

    def edge_dict(self, *, only_nonzero: bool = False) -> Dict[str, float]:
        """Every valid edge's name -> score."""
        values = self.edge_scores
        out = {}
        for s, r in self.graph.edges():
            v = float(values[s, r])
            if only_nonzero and v == 0.0:
                continue
            out[self.graph.edge_name(s, r)] = v
        return out


# metric(logits, dataset) -> per-prompt metric [b] (a differentiable tensor).  ``logits`` are
# ``GraphEngine.run(...).logits`` at ``dataset.answer_pos``: [b, V] for an answer_pos of [b],
# [b, k, V] for one of [b, k].  The one Metric type: other modules import it from here.
Metric = Callable[["Tensor", "PromptDataset"], "Tensor"]


class Method(Protocol):
    """The signature every scoring method plugin shares.

    granularity: ``"edge"`` or ``"node"`` (what it scores; a node method's circuits are chosen by
    node).  cost: one line, shown by ``circuits methods list``.
    """

    name: str
    description: str
    granularity: str
    cost: str

    def score(self, engine, dataset, metric: Metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        ...
