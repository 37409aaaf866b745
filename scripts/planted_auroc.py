"""Print the edge AUROC of every scoring method on every planted model against its ground truth.

    .venv/bin/python scripts/planted_auroc.py [--n 40] [--seed 0]

Bars (issue 4): path patching and EAP-IG >= 0.99, EAP >= 0.95; activation patching
(a node method) must rank the ground-truth nodes first.
"""
from __future__ import annotations

import argparse
import time

from circuits.engine import GraphEngine
from circuits.graphs.compare import auroc
from circuits.models import load_model
from circuits.models.planted import VARIANTS, ground_truth
from circuits.registry import get_method, get_task

BARS = {"eap": 0.95, "eap-ig": 0.99, "path-patching": 0.99}


def gt_nodes_first(node_scores: dict, gt_nodes: set) -> bool:
    ranked = sorted(node_scores, key=lambda k: -abs(node_scores[k]))
    return set(ranked[: len(gt_nodes)]) == gt_nodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task = get_task("greater-than")
    ok = True
    print(f"{'model':<14} {'method':<20} {'edge AUROC':>10} {'bar':>6} {'seconds':>8}")
    for spec in VARIANTS:
        loaded = load_model(spec)
        engine = GraphEngine.from_model(loaded)
        data = task.build(loaded.tokenizer, n=args.n, seed=args.seed)
        truth = ground_truth(spec)
        gt_edges = set(truth["edges"])
        for method in ("eap", "eap-ig", "path-patching", "activation-patching"):
            start = time.perf_counter()
            scores = get_method(method).score(engine, data, task.metric)
            seconds = time.perf_counter() - start
            value = auroc({k: abs(v) for k, v in scores.edge_dict().items()}, gt_edges)
            if method == "activation-patching":
                nodes = {n for n in truth["nodes"] if n not in ("input", "logits")}
                first = gt_nodes_first(scores.node_scores, nodes)
                ok &= first
                print(f"{spec:<14} {method:<20} {value:>10.4f} {'nodes':>6} {seconds:>8.1f}  ground-truth nodes ranked first: {first}")
                continue
            ok &= value >= BARS[method]
            print(f"{spec:<14} {method:<20} {value:>10.4f} {BARS[method]:>6.2f} {seconds:>8.1f}")
    print("ALL BARS MET" if ok else "SOME BARS MISSED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
