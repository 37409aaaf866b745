"""Neurons inside circuits: an MLP kept through some of its neurons only.

A circuit may *reduce* an MLP to a set of its neurons (``m10.n123`` nodes).  The MLP keeps its
edges, but in the patched run its other neurons carry their reference activations (the
corrupted run's or the mean hidden activations, like patched edges): the MLP's output is
``W_out`` applied to the kept neurons' current activations and the others' reference ones.

Neurons are held as :data:`NeuronMasks`: MLP layer -> bool ``[d_mlp]`` (True = kept); an MLP
not in the map is kept or dropped whole, by its edges.  Nothing here prints or writes files.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from circuits import names
from circuits.errors import CircuitsError

NeuronMasks = Dict[int, Tensor]  # MLP layer -> bool [d_mlp]
HiddenReference = Dict[int, Tensor]  # MLP layer -> reference hidden activations [n, p, d_mlp]

__all__ = ["NeuronMasks", "HiddenReference", "neuron_masks", "neuron_lists", "masks_key", "top_neuron_masks",
           "hidden_reference", "hidden_edit", "score_top_neurons"]


def neuron_masks(neurons: Mapping[Union[str, int], Sequence[int]], *, n_layers: int, d_mlp: int) -> NeuronMasks:
    """``{"m10": [123, ...]}`` (or layer -> indices) -> bool masks, checked against the model's shape."""
    out: NeuronMasks = {}
    for key, idx in neurons.items():
        if isinstance(key, int):
            layer = key
        else:
            try:
                node = names.parse_node(str(key))
            except names.NameError_:
                node = None
            if node is None or node.kind != "mlp":
                raise CircuitsError(f"neurons are listed per MLP, like {{\"m10\": [123]}}; {key!r} is not an MLP name")
            layer = node.layer
        if not 0 <= layer < n_layers:
            raise CircuitsError(f"the circuit reduces m{layer}, but the model has MLPs m0..m{n_layers - 1}; "
                                "was the circuit found on another model?")
        mask = torch.zeros(d_mlp, dtype=torch.bool)
        for i in idx:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < d_mlp:
                raise CircuitsError(f"neuron m{layer}.n{i} is not in the model (m{layer} has neurons 0..{d_mlp - 1})")
            mask[i] = True
        out[layer] = mask | out[layer] if layer in out else mask
    return out


def neuron_lists(masks: Optional[Mapping[int, Tensor]]) -> Dict[str, list]:
    """Masks -> ``{"m10": [kept indices, ascending]}`` (MLPs in layer order), for files."""
    return {names.format_node(names.mlp(layer)): [int(i) for i in torch.nonzero(masks[layer]).flatten()]
            for layer in sorted(masks or {})}


def masks_key(masks: Optional[Mapping[int, Tensor]]) -> bytes:
    """Bytes that identify a set of neuron masks (for caches); empty for none."""
    if not masks:
        return b""
    return b"".join(layer.to_bytes(4, "little") + torch.as_tensor(masks[layer]).bool().cpu().numpy().tobytes()
                    for layer in sorted(masks))


def top_neuron_masks(neuron_scores: Mapping[str, Sequence], layers: Sequence[int], k: int, *, d_mlp: int,
                     method: str = "") -> NeuronMasks:
    """The ``k`` neurons with the largest ``|score|`` of each MLP in ``layers``, from ``Scores.neuron_scores``."""
    out: NeuronMasks = {}
    for layer in layers:
        name = names.format_node(names.mlp(layer))
        ranked = list(neuron_scores.get(name) or ())
        if not ranked:
            raise CircuitsError(f"method {method or '?'} gave no neuron scores for {name}, so --keep-neurons cannot "
                                "choose its neurons; use eap, eap-ig or activation-patching")
        if len(ranked) < k:
            raise CircuitsError(f"--keep-neurons {k}: only {len(ranked)} neurons of {name} were scored; "
                                f"pass --keep-neurons {len(ranked)} or fewer")
        ranked.sort(key=lambda item: (-abs(float(item[1])), int(item[0])))
        mask = torch.zeros(d_mlp, dtype=torch.bool)
        mask[[int(i) for i, _ in ranked[:k]]] = True
        out[layer] = mask
    return out


def hidden_reference(engine, dataset, layers: Sequence[int], *, ablation: str = "corrupted",
                     batch_size: int = 0) -> HiddenReference:
    """The hidden activations patched neurons carry, per MLP layer: [n, p, d_mlp] on the engine's device.

    Built with :func:`circuits.engine.ablation.reference` per batch, so it follows the same ablation
    as the edges (the corrupted run's activations, or the clean mean over the dataset).
    """
    from circuits.data.batching import batches
    from circuits.engine.ablation import static_reference, reference

    layers = tuple(sorted(set(int(layer) for layer in layers)))
    if not layers:
        return {}
    means = static_reference(engine, dataset, ablation, hidden_layers=layers, batch_size=batch_size)
    parts: Dict[int, list] = {layer: [] for layer in layers}
    for part in batches(dataset, batch_size):
        ref = reference(engine, part, ablation, means=means, hidden_layers=layers)
        for layer in layers:
            parts[layer].append(ref.hidden[layer])
    return {layer: (p[0] if len(p) == 1 else torch.cat(p, 0)) for layer, p in parts.items()}


def hidden_edit(masks: Optional[Mapping[int, Tensor]], reference: Mapping[int, Tensor]):
    """An ``edit_hidden`` callback for ``GraphEngine.run``: in each reduced MLP, the neurons outside its mask
    take ``reference[layer]`` (the batch's own [b, p, d_mlp]); None when no MLP is reduced."""
    if not masks:
        return None
    missing = [layer for layer in masks if layer not in reference]
    if missing:
        raise ValueError(f"no reference hidden activations for MLP layers {missing}")
    keep = {layer: torch.as_tensor(m, dtype=torch.bool) for layer, m in masks.items()}

    def edit(layer: int, hidden: Tensor) -> Tensor:
        if layer not in keep:
            return hidden
        k = keep[layer].to(hidden.device)
        ref = reference[layer].to(device=hidden.device, dtype=hidden.dtype)
        return torch.where(k, hidden, ref)

    return edit


def score_top_neurons(engine, dataset, metric, layers: Sequence[int], k: int, *, method: str = "eap",
                      ablation: str = "corrupted", batch_size: int = 0) -> NeuronMasks:
    """The top ``k`` neurons of each MLP in ``layers`` by ``method``'s neuron scores on ``dataset``
    (the full model's attributions, as ``discover --neurons ... --keep-neurons k`` ranks them)."""
    from circuits.registry import get_method
    from circuits.methods.base import MethodOptions

    options = MethodOptions(ablation=ablation, neurons=tuple(names.format_node(names.mlp(layer)) for layer in layers),
                            top_neurons=int(k), batch_size=batch_size)
    scores = get_method(method).score(engine, dataset, metric, options)
    return top_neuron_masks(scores.neuron_scores, layers, int(k), d_mlp=engine.w.d_mlp, method=method)
