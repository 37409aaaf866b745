"""One clean and one corrupted pass over the prompts, kept compactly for every analysis that restarts from them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from circuits.data.batching import batches
from circuits.methods.base import Progress, no_progress

__all__ = ["Runs", "collect_runs", "sliced_batches"]


@dataclass
class Runs:
    """Per prompt (all on the engine's device):

    resid_pre: the clean residual stream at each layer's input, then the final one: L + 1 x [n, p, d].
    logits: clean logits at the answer positions [n, V] (or [n, k, V]).
    mlp_answer: layer -> the clean MLP output at the (first) answer position [n, d].
    mlp_delta: layer -> corrupted minus clean MLP output [n, p, d].
    hidden_delta: layer -> corrupted minus clean MLP hidden activations [n, p, m].
    """

    resid_pre: List[Tensor]
    logits: Tensor
    mlp_answer: Dict[int, Tensor] = field(default_factory=dict)
    mlp_delta: Dict[int, Tensor] = field(default_factory=dict)
    hidden_delta: Dict[int, Tensor] = field(default_factory=dict)

    def covers(self, mlp_layers: Sequence[int] = (), hidden_layers: Sequence[int] = ()) -> bool:
        return all(l in self.mlp_delta for l in mlp_layers) and all(l in self.hidden_delta for l in hidden_layers)


def collect_runs(engine, dataset, *, mlp_layers: Sequence[int] = (), hidden_layers: Sequence[int] = (),
                 batch_size: int = 0, progress: Optional[Progress] = None) -> Runs:
    """Run the clean and the corrupted prompts once (``batch_size`` at a time) and keep what the analyses need."""
    progress = progress or no_progress
    g = engine.graph
    mlp_layers, hidden_layers = tuple(sorted(set(mlp_layers))), tuple(sorted(set(hidden_layers)))
    resid: List[List[Tensor]] = []
    logits: List[Tensor] = []
    answer: Dict[int, List[Tensor]] = {l: [] for l in mlp_layers}
    delta: Dict[int, List[Tensor]] = {l: [] for l in mlp_layers}
    hidden: Dict[int, List[Tensor]] = {l: [] for l in hidden_layers}
    parts = batches(dataset, batch_size)
    with torch.no_grad():
        for i, part in enumerate(parts):
            collect = bool(mlp_layers)
            clean = engine.run(part.clean.to(engine.device), part.answer_pos, collect=collect, keep_resid=True,
                               capture_hidden=hidden_layers)
            ref = None
            if mlp_layers or hidden_layers:
                ref = engine.run(part.corrupted.to(engine.device), part.answer_pos, collect=collect,
                                 capture_hidden=hidden_layers)
            resid.append(clean.resid_pre)
            logits.append(clean.logits)
            idx = torch.arange(len(part), device=engine.device)
            pos = part.first_answer_pos.to(engine.device)
            for l in mlp_layers:
                s = g.mlp_sender(l)
                answer[l].append(clean.outputs[s][idx, pos])
                delta[l].append(ref.outputs[s] - clean.outputs[s])
            for l in hidden_layers:
                hidden[l].append(ref.hidden[l] - clean.hidden[l])
            del clean, ref
            progress(i + 1, len(parts), "clean and corrupted runs")
    return Runs(resid_pre=[torch.cat([r[j] for r in resid]) for j in range(len(resid[0]))],
                logits=torch.cat(logits),
                mlp_answer={l: torch.cat(v) for l, v in answer.items()},
                mlp_delta={l: torch.cat(v) for l, v in delta.items()},
                hidden_delta={l: torch.cat(v) for l, v in hidden.items()})


def sliced_batches(dataset, batch_size: int) -> Iterator[Tuple[slice, object]]:
    """``(slice of the prompts, the piece)`` for each piece of :func:`circuits.data.batching.batches`."""
    start = 0
    for part in batches(dataset, batch_size):
        yield slice(start, start + len(part)), part
        start += len(part)
