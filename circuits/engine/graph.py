"""The model's computational graph: senders, receiver inputs, and the edges between them.

Senders, in compute order::

    input, a0.h0 .. a0.h{H-1}, m0, a1.h0, ..., m{L-1}

Receivers (inputs), in compute order::

    a0.h0<q> .. a0.h{H-1}<q>, a0.h*<k>, a0.h*<v>, m0, a1.h0<q>, ..., m{L-1}, logits

A sender feeds every receiver computed after it: heads of layer l feed m{l} and all later
layers; m{l} feeds later layers; everything feeds the logits.  Scores live in one dense
[senders, receivers] tensor; ``valid`` marks the real edges.  For GPT-2 small (12 x 12)
that is 32,491 edges.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Dict, Iterable, List, Tuple

from circuits import names


@dataclass(frozen=True)
class ComputationalGraph:
    n_layers: int
    n_heads: int
    parallel: bool = False  # attention and MLP in parallel (GPT-NeoX): m{l} reads no head of layer l

    # ----------------------------------------------------------- index maths
    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * (3 * self.n_heads + 1) + 1

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def head_receiver(self, layer: int, head: int, qkv: str) -> int:
        return layer * (3 * self.n_heads + 1) + "qkv".index(qkv) * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_receivers - 1

    def sender_layer(self, sender: int) -> int:
        """The layer of a head or MLP sender (not ``input``)."""
        return (sender - 1) // (self.n_heads + 1)

    def receiver_layer(self, receiver: int) -> int:
        """The layer a receiver input belongs to; the logits' input counts as layer ``n_layers``."""
        return receiver // (3 * self.n_heads + 1)

    def senders_before_heads(self, layer: int) -> int:
        """How many senders feed the heads of ``layer`` (a prefix of the sender order)."""
        return 1 + layer * (self.n_heads + 1)

    def senders_before_mlp(self, layer: int) -> int:
        """How many senders feed the MLP of ``layer``: its own layer's heads too, unless the layer is parallel."""
        return 1 + layer * (self.n_heads + 1) + (0 if self.parallel else self.n_heads)

    def receiver_block(self, layer: int) -> slice:
        """The receivers of one layer: its heads' q, k, v inputs and its MLP."""
        start = layer * (3 * self.n_heads + 1)
        return slice(start, start + 3 * self.n_heads + 1)

    def n_valid_senders(self, receiver: int) -> int:
        if receiver == self.logits_receiver:
            return self.n_senders
        layer, within = divmod(receiver, 3 * self.n_heads + 1)
        return self.senders_before_mlp(layer) if within == 3 * self.n_heads else self.senders_before_heads(layer)

    # ----------------------------------------------------------- names
    @cached_property
    def sender_names(self) -> Tuple[str, ...]:
        out = [names.INPUT]
        for layer in range(self.n_layers):
            out += [names.format_node(names.head(layer, h)) for h in range(self.n_heads)]
            out.append(names.format_node(names.mlp(layer)))
        return tuple(out)

    @cached_property
    def receiver_node(self) -> Tuple[int, ...]:
        """For each receiver input, the sender index of the node it belongs to (``logits``: ``n_senders``)."""
        out = [self.n_senders] * self.n_receivers
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                for qkv in "qkv":
                    out[self.head_receiver(layer, h, qkv)] = self.head_sender(layer, h)
            out[self.mlp_receiver(layer)] = self.mlp_sender(layer)
        return tuple(out)

    @cached_property
    def receiver_names(self) -> Tuple[str, ...]:
        out: List[str] = []
        for layer in range(self.n_layers):
            for qkv in names.QKV:
                out += [names.format_receiver(names.head(layer, h), qkv) for h in range(self.n_heads)]
            out.append(names.format_node(names.mlp(layer)))
        out.append(names.LOGITS)
        return tuple(out)

    @cached_property
    def _sender_index(self) -> Dict[str, int]:
        return {n: i for i, n in enumerate(self.sender_names)}

    @cached_property
    def _receiver_index(self) -> Dict[str, int]:
        return {n: i for i, n in enumerate(self.receiver_names)}

    def sender_index(self, name: str) -> int:
        node = names.parse_node(name)
        key = names.format_node(node)
        if key not in self._sender_index:
            raise KeyError(f"{name!r} is not a sender of this {self.n_layers}x{self.n_heads} model")
        return self._sender_index[key]

    def receiver_index(self, name: str) -> int:
        node, qkv = names.parse_receiver(name)
        key = names.format_receiver(node, qkv)
        if key not in self._receiver_index:
            raise KeyError(f"{name!r} is not a receiver of this {self.n_layers}x{self.n_heads} model")
        return self._receiver_index[key]

    def edge_index(self, name: str) -> Tuple[int, int]:
        """(sender, receiver) indices of an edge name; KeyError if the edge does not exist."""
        edge = names.parse_edge(name)
        s = self.sender_index(names.format_node(edge.src))
        r = self.receiver_index(names.format_receiver(edge.dst, edge.qkv))
        if s >= self.n_valid_senders(r):
            raise KeyError(f"{name!r} is not an edge: the sender is computed after the receiver")
        return s, r

    def edge_name(self, s: int, r: int) -> str:
        return f"{self.sender_names[s]}->{self.receiver_names[r]}"

    def keep_mask(self, edge_names: Iterable[str], *, model: str = ""):
        """Bool [senders, receivers] mask of the named edges (a saved circuit on this graph).

        An edge named at neuron level (``a5.h1->m10.n123``) is read as its MLP's edge (``a5.h1->m10``);
        which neurons a reduced MLP keeps is the circuit's ``neurons`` (``circuits.circuit.neurons``).
        Raises ``CircuitsError`` naming the first edge that is malformed or is not in this graph
        (a circuit of another model).
        """
        import torch

        from circuits.errors import CircuitsError

        keep = torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)
        where = f" of {model}" if model else ""
        for name in sorted(edge_names):
            try:
                edge = names.parse_edge(name)
            except names.NameError_ as exc:
                raise CircuitsError(f"the circuit has a bad edge: {exc}") from None
            src, dst = (names.mlp(n.layer) if n.kind == "neuron" else n for n in (edge.src, edge.dst))
            try:
                s, r = self.edge_index(names.format_edge(names.Edge(src, dst, edge.qkv)))
            except KeyError:
                raise CircuitsError(
                    f"edge {name} is not in the graph{where} ({self.n_layers} layers x {self.n_heads} heads, "
                    f"{self.n_edges} edges); was the circuit found on another model?") from None
            keep[s, r] = True
        return keep

    # ----------------------------------------------------------- edges
    def valid_mask(self, device=None):
        """Bool tensor [senders, receivers]: True where an edge exists."""
        import torch

        counts = torch.tensor([self.n_valid_senders(r) for r in range(self.n_receivers)], device=device)
        return torch.arange(self.n_senders, device=device)[:, None] < counts[None, :]

    @property
    def n_edges(self) -> int:
        return sum(self.n_valid_senders(r) for r in range(self.n_receivers))

    def edges(self) -> List[Tuple[int, int]]:
        """Every edge as (sender, receiver), receivers in compute order."""
        return [(s, r) for r in range(self.n_receivers) for s in range(self.n_valid_senders(r))]

    def edge_names(self) -> List[str]:
        return [self.edge_name(s, r) for s, r in self.edges()]
