"""Print, for every scoring method on every planted model: the edge AUROC against the ground truth,
and the precision and recall of the circuit ``discover`` chooses by default (target faithfulness 0.9).

    .venv/bin/python scripts/planted_auroc.py [--n 40] [--seed 0]

Bars (issue 4): path patching and EAP-IG >= 0.99, EAP >= 0.95; activation patching
(a node method) must rank the ground-truth nodes first.  Issue 26: GIM, RelP and edge patching
1.0, and edge patching's scores equal a plain loop of full patched forwards, one edge at a time.  Bars (issue 11): every default circuit
has node precision and recall 1.0; an edge method's has edge recall 1.0 and precision >= 0.9.
"""
from __future__ import annotations

import argparse
import time

from circuits.circuit.discover import discover
from circuits.engine.engine import GraphEngine
from circuits.graphs.build import build_graph
from circuits.graphs.compare import auroc, compare
from circuits.models import load_model
from circuits.models.planted import VARIANTS, ground_truth
from circuits.registry import get_method, get_task

BARS = {"eap": 0.95, "eap-ig": 0.99, "path-patching": 0.99, "gim": 1.0, "relp": 1.0, "edge-patching": 1.0}


def gt_nodes_first(node_scores: dict, gt_nodes: set) -> bool:
    ranked = sorted(node_scores, key=lambda k: -abs(node_scores[k]))
    return set(ranked[: len(gt_nodes)]) == gt_nodes


def exact_difference(engine, data, metric, scores):
    """Max |score - effect| over the valid edges, each effect measured by its own full patched forward
    (``engine.run`` from the input, every other edge clean), and the largest |effect|."""
    import torch

    from circuits.engine.engine import Patch

    g = engine.graph
    with torch.no_grad():
        ref = engine.run(data.corrupted, data.answer_pos, collect=True).outputs
        clean = float(metric(engine.run(data.clean, data.answer_pos).logits, data).double().mean())
        keep = g.valid_mask().to(ref.dtype)
        diff = top = 0.0
        for s, r in g.edges():
            one = keep.clone()
            one[s, r] = 0
            effect = float(metric(engine.run(data.clean, data.answer_pos, patch=Patch(one, ref)).logits, data).double().mean()) - clean
            diff, top = max(diff, abs(float(scores[s, r]) - effect)), max(top, abs(effect))
    return diff, top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (default: all)")
    args = parser.parse_args()
    task = get_task("greater-than")
    ok = True
    print(f"{'model':<14} {'method':<20} {'edge AUROC':>10} {'bar':>6} {'node P':>6} {'node R':>6} {'edge P':>6} "
          f"{'edge R':>6} {'f':>6} {'seconds':>8}")
    for spec in VARIANTS:
        loaded = load_model(spec)
        engine = GraphEngine.from_model(loaded)
        data = task.build(loaded.tokenizer, n=args.n, seed=args.seed)
        truth = ground_truth(spec)
        gt_edges = set(truth["edges"])
        reference = build_graph({e: 1.0 for e in gt_edges})
        for method in args.methods or ("eap", "eap-ig", "path-patching", "activation-patching", "gim", "relp", "edge-patching"):
            method_obj = get_method(method)
            start = time.perf_counter()
            result = discover(engine, data, task.metric, method_obj, curve=False)
            seconds = time.perf_counter() - start
            scores = result.scores
            value = auroc({k: abs(v) for k, v in scores.edge_dict().items()}, gt_edges)
            found = compare(build_graph(result.kept_edges()), reference)
            nodes_ok = found["nodes"]["precision"] == 1.0 and found["nodes"]["recall"] == 1.0
            row = (f"{found['nodes']['precision']:>6.3f} {found['nodes']['recall']:>6.3f} {found['edges']['precision']:>6.3f} "
                   f"{found['edges']['recall']:>6.3f} {result.faithfulness.f:>6.3f} {seconds:>8.1f}")
            if method_obj.granularity == "node":
                nodes = {n for n in truth["nodes"] if n not in ("input", "logits")}
                first = gt_nodes_first({k: v for k, v in scores.node_scores.items() if k != "input"}, nodes)
                ok &= first and nodes_ok
                print(f"{spec:<14} {method:<20} {value:>10.4f} {'nodes':>6} {row}  ground-truth nodes ranked first: {first}")
                continue
            ok &= value >= BARS[method] and nodes_ok and found["edges"]["recall"] == 1.0 and found["edges"]["precision"] >= 0.9
            print(f"{spec:<14} {method:<20} {value:>10.4f} {BARS[method]:>6.2f} {row}")
            if method == "edge-patching":
                diff, top = exact_difference(engine, data, task.metric, scores.edge_scores)
                ok &= diff <= 1e-5 * top
                print(f"{'':<14} edge-patching vs one full patched forward per edge: max |difference| {diff:.2e} "
                      f"(largest |effect| {top:.3f})")
    print("ALL BARS MET" if ok else "SOME BARS MISSED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
