"""The one name grammar for components and edges.

Nodes::

    input            the token (and position) embeddings
    a9.h1            attention head 1 of layer 9
    m10              the MLP of layer 10
    m10.n42          neuron 42 of MLP 10
    logits           the unembedding's input (final residual stream)

Edges run from a sender node to a receiver *input*.  Heads have three inputs,
written ``<q>``, ``<k>`` and ``<v>``; every other receiver has one::

    a0.h1->a9.h1<q>     input->m0     m11->logits

Every other module formats and parses names through this one.  It imports
nothing of ours.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

INPUT = "input"
LOGITS = "logits"
QKV = ("q", "k", "v")

_NODE = re.compile(r"^(?:(?P<io>input|logits)|a(?P<al>\d+)\.h(?P<ah>\d+)|m(?P<ml>\d+)(?:\.n(?P<mn>\d+))?)$")
_EDGE = re.compile(r"^(?P<src>[^<>-]+)->(?P<dst>[^<>-]+)(?:<(?P<qkv>[qkv])>)?$")


class NameError_(ValueError):
    """A component or edge name that does not follow the grammar."""


@dataclass(frozen=True, order=True)
class Node:
    """One component. ``kind`` is ``input``, ``head``, ``mlp``, ``neuron`` or ``logits``."""

    kind: str
    layer: Optional[int] = None
    index: Optional[int] = None  # head index or neuron index

    def __str__(self) -> str:
        return format_node(self)

    @property
    def head(self) -> Optional[int]:
        return self.index if self.kind == "head" else None


@dataclass(frozen=True, order=True)
class Edge:
    """A sender node feeding one input of a receiver node (``qkv`` for heads only)."""

    src: Node
    dst: Node
    qkv: Optional[str] = None

    def __str__(self) -> str:
        return format_edge(self)


def head(layer: int, h: int) -> Node:
    return Node("head", layer, h)


def mlp(layer: int) -> Node:
    return Node("mlp", layer)


def neuron(layer: int, n: int) -> Node:
    return Node("neuron", layer, n)


INPUT_NODE = Node(INPUT)
LOGITS_NODE = Node(LOGITS)


def format_node(node: Node) -> str:
    if node.kind in (INPUT, LOGITS):
        return node.kind
    if node.kind == "head":
        return f"a{node.layer}.h{node.index}"
    if node.kind == "mlp":
        return f"m{node.layer}"
    if node.kind == "neuron":
        return f"m{node.layer}.n{node.index}"
    raise NameError_(f"unknown node kind {node.kind!r}")


def parse_node(name: str) -> Node:
    m = _NODE.match(name.strip())
    if not m:
        raise NameError_(
            f"bad component name {name!r}: use input, logits, a<layer>.h<head>, m<layer> or m<layer>.n<neuron>"
        )
    if m["io"]:
        return Node(m["io"])
    if m["al"] is not None:
        return head(int(m["al"]), int(m["ah"]))
    if m["mn"] is not None:
        return neuron(int(m["ml"]), int(m["mn"]))
    return mlp(int(m["ml"]))


def format_receiver(node: Node, qkv: Optional[str] = None) -> str:
    """A receiver input: ``a9.h1<q>`` for heads, the plain node name otherwise."""
    base = format_node(node)
    return f"{base}<{qkv}>" if qkv else base


def parse_receiver(name: str) -> tuple[Node, Optional[str]]:
    name = name.strip()
    qkv = None
    if name.endswith(">") and "<" in name:
        name, qkv = name[:-1].split("<", 1)
        if qkv not in QKV:
            raise NameError_(f"bad receiver input <{qkv}>: use <q>, <k> or <v>")
    node = parse_node(name)
    _check_edge_end(node, qkv)
    return node, qkv


def format_edge(edge: Edge) -> str:
    return f"{format_node(edge.src)}->{format_receiver(edge.dst, edge.qkv)}"


def parse_edge(name: str) -> Edge:
    m = _EDGE.match(name.strip())
    if not m:
        raise NameError_(f"bad edge name {name!r}: use SENDER->RECEIVER, e.g. a0.h1->a9.h1<q> or m3->logits")
    src = parse_node(m["src"])
    dst = parse_node(m["dst"])
    if src.kind == LOGITS:
        raise NameError_(f"bad edge name {name!r}: logits cannot send")
    if dst.kind == INPUT:
        raise NameError_(f"bad edge name {name!r}: input cannot receive")
    _check_edge_end(dst, m["qkv"])
    return Edge(src, dst, m["qkv"])


def _check_edge_end(dst: Node, qkv: Optional[str]) -> None:
    if dst.kind == "head" and qkv is None:
        raise NameError_(f"head receiver {format_node(dst)} needs an input: add <q>, <k> or <v>")
    if dst.kind != "head" and qkv is not None:
        raise NameError_(f"only heads take <{qkv}>; {format_node(dst)} has a single input")


def node_layer_order(node: Node) -> tuple[float, int]:
    """Sort key: input first, then by layer (heads before the MLP), logits last."""
    if node.kind == INPUT:
        return (-1.0, 0)
    if node.kind == LOGITS:
        return (float("inf"), 0)
    if node.kind == "head":
        return (node.layer, node.index)
    return (node.layer + 0.5, node.index or 0)


def sort_key(name: str) -> tuple:
    """Sort key of a node name: input first, then by layer (heads before the MLP), logits last."""
    node = parse_node(name)
    return (node_layer_order(node), node.kind)
