#!/usr/bin/env python
"""Write the reference circuits in graphs/references/ (node-link JSON, one file per circuit).

* one file per planted model: its ground truth, from ``circuits.models.planted.ground_truth``
  (``planted-positional.json``: a positional circuit of (edge, span) pairs, see ``circuits.graphs.positions``);
* ``planted-neurons.json``: planted's ground truth with its readout MLP m1 reduced to the 48
  neurons that carry the task (``circuits.models.planted.task_neurons``);
* ``hanna-gpt2.json``: the greater-than circuit Hanna et al. (2023) published for GPT-2 small.
  The paper lists nodes (heads, MLPs and the positions they act at), not edges; the edges
  here are inferred (see the file's metadata).
* ``ioi-gpt2.json``: the IOI circuit Wang et al. (2023) published for GPT-2 small.  The heads
  and their classes (node attribute ``head_class``) are the paper's; the edges join the
  classes as the paper's circuit diagram does, head by head, and are inferred.

Usage: ``python scripts/make_references.py [--out-dir DIR] [--check]``.  ``--check`` writes
nothing and exits 1 if a shipped file differs from what this script would write.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from circuits.graphs.build import build_graph, to_node_link
from circuits.models.planted import VARIANTS, ground_truth

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "graphs" / "references"

HANNA_YY_HEADS = ("a0.h1", "a0.h3", "a0.h5")
HANNA_YY_MLPS = ("m0", "m1", "m2", "m3")
HANNA_MID_HEADS = ("a5.h1", "a5.h5", "a6.h9", "a7.h10", "a8.h8", "a8.h11", "a9.h1")
HANNA_LATE_MLPS = ("m8", "m9", "m10", "m11")


def _layer(node: str) -> int:
    return int(node[1:].split(".")[0])


def hanna_edges() -> list[str]:
    """Plausible edges joining the nodes Hanna et al. list (all valid in GPT-2 small's edge graph)."""
    early = HANNA_YY_HEADS + HANNA_YY_MLPS
    edges = [f"input->{h}<v>" for h in HANNA_YY_HEADS] + ["input->m0"]
    edges += ["m0->m1", "m1->m2", "m2->m3"]  # the MLP chain at the YY position
    edges += [f"{h}->{m}" for h in HANNA_YY_HEADS for m in HANNA_YY_MLPS]  # residual edges among early nodes
    edges += ["m0->m2", "m0->m3", "m1->m3"]
    edges += [f"{e}->{h}<v>" for e in early for h in HANNA_MID_HEADS]  # the heads' OV reads YY's representation
    edges += [f"{h}->{m}" for h in HANNA_MID_HEADS for m in HANNA_LATE_MLPS if _layer(h) <= _layer(m)]
    edges += [f"{m}->logits" for m in HANNA_LATE_MLPS] + [f"{h}->logits" for h in HANNA_MID_HEADS]
    return edges


def hanna_reference() -> dict[str, Any]:
    positions = {n: "YY" for n in ("input",) + HANNA_YY_HEADS + HANNA_YY_MLPS}
    positions.update({n: "last" for n in HANNA_MID_HEADS + HANNA_LATE_MLPS + ("logits",)})
    metadata = {
        "name": "hanna-gpt2",
        "kind": "published",
        "description": "GPT-2 small's greater-than circuit (Hanna et al. 2023): nodes as published, edges inferred",
        "model": "gpt2",
        "task": "greater-than",
        "source": "Hanna, Liu & Variengien (2023), How does GPT-2 compute greater-than? "
        "Interpreting mathematical abilities in a pre-trained language model. NeurIPS 2023. arXiv:2305.00586",
        "note": "The paper lists the circuit's nodes: heads a5.h1, a5.h5, a6.h9, a7.h10, a8.h8, a8.h11, a9.h1 "
        "and MLPs 8-11 acting at the last position; MLPs 0-3 and heads a0.h1, a0.h3, a0.h5 acting at the YY "
        "position. It does not list edges. The edges here were inferred: input feeds the early heads' values "
        "and m0; m0->m1->m2->m3 plus residual edges among the early nodes; every early node feeds every "
        "mid head's value input; mid heads feed MLPs 8-11 (same or later layer) and the logits; MLPs 8-11 "
        "feed the logits. Our graph has no positions, so each node's position is the attribute 'position'. "
        "Edge scores are 1.0 (membership, not effect sizes).",
        "n_layers": 12,
        "n_heads": 12,
    }
    return _reference(hanna_edges(), positions, metadata)


# Wang et al. (2023), Interpretability in the Wild, figure 2 and section 3: head -> class.
IOI_CLASSES = {
    "name mover": ("a9.h9", "a9.h6", "a10.h0"),
    "negative name mover": ("a10.h7", "a11.h10"),
    "backup name mover": ("a10.h10", "a10.h6", "a10.h2", "a10.h1", "a11.h2", "a9.h7", "a9.h0", "a11.h9"),
    "s-inhibition": ("a7.h3", "a7.h9", "a8.h6", "a8.h10"),
    "induction": ("a5.h5", "a5.h8", "a5.h9", "a6.h9"),
    "duplicate token": ("a0.h1", "a0.h10", "a3.h0"),
    "previous token": ("a2.h2", "a4.h11"),
}
IOI_POSITIONS = {"name mover": "END", "negative name mover": "END", "backup name mover": "END", "s-inhibition": "END",
                 "induction": "S2", "duplicate token": "S2", "previous token": "S1+1"}


def ioi_edges() -> list[str]:
    """The class-to-class links of the paper's diagram, written head by head (all valid in GPT-2 small)."""
    c = IOI_CLASSES
    movers = c["name mover"] + c["negative name mover"] + c["backup name mover"]
    edges = [f"input->{h}<{x}>" for h in c["previous token"] for x in "qkv"]  # attend from S1+1 to S1
    edges += [f"input->{h}<{x}>" for h in c["duplicate token"] for x in "qkv"]  # attend from S2 to S1
    edges += [f"input->{h}<q>" for h in c["induction"]]  # the query is S2's token
    edges += [f"{p}->{h}<k>" for p in c["previous token"] for h in c["induction"]]  # K-composition
    edges += [f"{d}->{s}<v>" for d in c["duplicate token"] + c["induction"] for s in c["s-inhibition"]]  # S2 is duplicated
    edges += [f"{s}->{m}<q>" for s in c["s-inhibition"] for m in movers]  # Q-composition: do not attend to S
    edges += [f"input->{m}<{x}>" for m in movers for x in "kv"]  # the names themselves, copied from IO's position
    edges += [f"{m}->logits" for m in movers]
    return edges


def ioi_reference() -> dict[str, Any]:
    classes = {h: name for name, heads in IOI_CLASSES.items() for h in heads}
    metadata = {
        "name": "ioi-gpt2",
        "kind": "published",
        "description": "GPT-2 small's IOI circuit (Wang et al. 2023): heads and classes as published, edges inferred",
        "model": "gpt2",
        "task": "ioi",
        "source": "Wang, Variengien, Conmy, Shlegeris & Steinhardt (2023), Interpretability in the Wild: a Circuit "
        "for Indirect Object Identification in GPT-2 small. ICLR 2023. arXiv:2211.00593",
        "note": "The paper's: the 26 heads and their classes (node attribute 'head_class': name mover, negative "
        "name mover, backup name mover, s-inhibition, induction, duplicate token, previous token) and the "
        "position each class acts at (attribute 'position': END, S2, S1+1). Inferred here: every edge. The "
        "paper draws links between classes, not heads; we link every head of a class to every head of the "
        "next: previous token -> induction (keys), duplicate token and induction -> S-inhibition (values), "
        "S-inhibition -> name movers, negative and backup name movers (queries), the input -> the movers' "
        "keys and values and the early heads' inputs, the movers -> logits. The paper's circuit has no MLPs. "
        "Edge scores are 1.0 (membership, not effect sizes).",
        "n_layers": 12,
        "n_heads": 12,
    }
    positions = {h: IOI_POSITIONS[cls] for h, cls in classes.items()}
    data = _reference(ioi_edges(), positions, metadata)
    for node in data["nodes"]:
        if node["id"] in classes:
            node["head_class"] = classes[node["id"]]
    return data


def planted_reference(variant: str) -> dict[str, Any]:
    from circuits.models.planted import VERSION

    gt = ground_truth(variant)
    metadata = {
        "name": variant,
        "kind": "planted",
        "description": f"ground truth of {variant}: {gt['description']}",
        "model": variant,
        "task": "greater-than",
        "source": f"circuits.models.planted (v{VERSION}): the circuit is built by hand, so these edges are exact",
        "note": "Exactly the edges that carry YY into the metric: patching any one of them with the corrupted "
        "run (YY=01) drops the probability difference far below the full model's; patching all other edges "
        "together leaves it unchanged. Edge scores are 1.0 (membership, not effect sizes).",
        "n_layers": gt["n_layers"],
        "n_heads": gt["n_heads"],
    }
    if gt.get("pairs"):  # a positional ground truth: (edge, span) pairs over greater-than's schema
        from circuits.graphs.positions import build_positional_graph
        from circuits.tasks.greater_than import SPANS

        metadata["note"] = ("Exactly the (edge, span) pairs that carry YY into the metric; the decoy, m1 reading a0.h0 at "
                            "YY's position, is not among them, though a plain edge a0.h0->m1 covers it. Scores are 1.0 "
                            "(membership).")
        return to_node_link(build_positional_graph([(e, s, 1.0) for e, s in gt["pairs"]], SPANS, metadata=metadata))
    return _reference(gt["edges"], gt["positions"], metadata)


def planted_neurons_reference() -> dict[str, Any]:
    """planted's ground truth with m1 kept through its task neurons only."""
    from circuits.models.planted import task_neurons

    gt = ground_truth("planted")
    kept = {"m1": list(task_neurons("planted")["m1"])}
    base = planted_reference("planted")["graph"]
    metadata = {
        **base,
        "name": "planted-neurons",
        "description": f"ground truth of planted with its readout MLP m1 reduced to its {len(kept['m1'])} task neurons",
        "note": "The edges of planted's ground truth; m1 is kept through the neurons that map a0.h0's code to the "
        "answer (the model's MLP 'map'), and its other neurons (decoys) carry their reference activations. "
        "This circuit is as faithful as planted's with m1 whole. Edge scores are 1.0 (membership).",
    }
    return _reference(gt["edges"], gt["positions"], metadata, neurons=kept)


def _reference(edges: list[str], positions: dict[str, str], metadata: dict[str, Any], neurons=None) -> dict[str, Any]:
    G = build_graph({e: 1.0 for e in edges}, metadata=metadata, neurons=neurons)
    for node, position in positions.items():
        if node in G:
            G.nodes[node]["position"] = position
    return to_node_link(G)


def references() -> dict[str, dict[str, Any]]:
    """Every reference circuit: file stem -> node-link data."""
    out = {name: planted_reference(name) for name in VARIANTS}
    out["planted-neurons"] = planted_neurons_reference()
    out["hanna-gpt2"] = hanna_reference()
    out["ioi-gpt2"] = ioi_reference()
    return out


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_DIR, help=f"where to write [default: {DEFAULT_DIR}]")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is missing or stale")
    args = parser.parse_args(argv)
    from circuits.atomic import write_atomic

    stale = []
    for name, data in references().items():
        path = args.out_dir / f"{name}.json"
        text = render(data)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        write_atomic(path, text)
        print(path)
    if stale:
        print("stale or missing (run scripts/make_references.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
