"""The method plugin contract: what a scoring method declares, takes and returns.

A method is one class in one file, registered through the ``circuits.methods`` entry point. It has
``name``, ``description``, ``granularity`` (``"edge"`` or ``"node"``), ``cost`` (one line) and
``options``: a tuple of :class:`Option` declarations for its own settings.  The CLI's flags, the
service's ``/api/kinds`` and validation, and the manifest are generated from those declarations, so
adding a method touches its file and its entry point only.  ``score`` receives the shared settings
(ablation, batch size, neurons) in :class:`MethodOptions` and its own in ``MethodOptions.params``
(see :func:`option_values`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from circuits.engine.graph import ComputationalGraph
from circuits.errors import CircuitsError
from circuits.options import Option

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from circuits.data.dataset import PromptDataset

# progress(step_done, steps_total, message): long methods call it; the CLI draws a bar.
Progress = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str) -> None:
    """The default progress callback: ignore."""


DEFAULT_MAX_PASSES = 800  # path patching: about 20 min for SmolLM2-135M, greater-than n = 50, on a 2-core CPU
VERIFY_AUTO_EDGES = 64  # target-faithfulness circuits up to this size are verified by patching unless told not to
VERIFY_TOLERANCE = 1e-3  # of |m_full - m_empty|: the most verification may move the circuit's metric


def declared_options(method: Any) -> Tuple[Option, ...]:
    """A method's own option declarations (none for a method that declares none)."""
    return tuple(getattr(method, "options", ()) or ())


def option_values(method: Any, given: Mapping[str, Any]) -> Dict[str, Any]:
    """Every declared option of ``method``: the given value, checked, or the default.

    A name ``method`` does not declare is refused with the flag and the methods that do declare it
    named where known (``known``: all installed methods, to say whose option it is).
    """
    declared = {o.name: o for o in declared_options(method)}
    for name in given:
        if name not in declared:
            flag = "--" + name.replace("_", "-")
            own = ", ".join(sorted(declared)) or "none"
            raise CircuitsError(f"{flag} is not an option of {getattr(method, 'name', method)!r} (its options: {own})")
    return {name: (o.check(given[name]) if name in given else o.default) for name, o in declared.items()}


@dataclass(frozen=True)
class MethodOptions:
    """The settings every scoring method receives.

    ablation: one of ``circuits.engine.ablation.ABLATIONS``: ``corrupted`` (counterfactual: the corrupted
        prompts' activations), ``mean`` (the clean activations' mean over the prompts, per position),
        ``mean-positions`` (their mean over the prompts and the positions) or ``zero``.
    batch_size: prompts per forward pass (0: all at once).
    neurons: MLP layers whose neurons are scored, e.g. ``("m10", "m11")``.
    top_neurons: how many neurons per MLP to report.
    params: the method's own options (its ``options`` declarations), name -> value; a method reads
        them with ``option_values(self, options.params)``, which fills the defaults.
    """

    ablation: str = "corrupted"
    batch_size: int = 0
    neurons: Tuple[str, ...] = ()
    top_neurons: int = 10
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scores:
    """A method's result.

    edge_scores: [senders, receivers] float tensor: the estimated change of the mean metric when
        the edge is patched (negative: the edge helps the behaviour).  Invalid or unscored entries are 0.
    node_scores: node name -> score (activation patching; others may leave it empty).
    neuron_scores: MLP name -> [(neuron index, score), ...], strongest first.
    extra: method-specific tables (e.g. residual-stream scores per layer and position).
    info: counts and settings (e.g. ``forward_passes``).
    scored: None when every valid edge was scored; else a bool [senders, receivers] tensor of the
        edges that were (a sampled method such as ``edge-patching --sample K``).  Unscored edges hold
        0 in ``edge_scores`` and are written as unscored, not as 0, in ``scores.tsv`` and the manifest.
    """

    graph: ComputationalGraph
    method: str
    edge_scores: Any
    node_scores: Mapping[str, float] = field(default_factory=dict)
    neuron_scores: Mapping[str, List[Tuple[int, float]]] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, Any] = field(default_factory=dict)
    scored: Any = None

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
    node).  cost: one line, shown by ``circuits methods list``.  options: its own settings
    (:class:`Option`), from which the CLI's flags and the service's fields are made.
    default_selection (optional): ``"acdc"`` when the method chooses its own circuit.
    """

    name: str
    description: str
    granularity: str
    cost: str
    options: Sequence[Option]

    def score(self, engine, dataset, metric: Metric, options: MethodOptions = MethodOptions(), *,
              progress: Optional[Progress] = None) -> Scores:
        ...
