"""The size of a run's circuit at held-out faithfulness >= F: the target search run on the held-out prompts.

    .venv/bin/python scripts/heldout_size.py RUN [RUN ...] [--target 0.9] [--tolerance 0.01] [--json]

``discover`` chooses its circuit on the scored prompts and then reports the faithfulness of that circuit
on the held-out ones.  This answers the other question: how many edges, taken in the run's own ranking
(``selection.ranking`` in its manifest), the circuit needs for f >= F **on the held-out prompts**.  Each
run folder is read back (``manifest.json``, ``scores.tsv``); the prompts and the held-out split are rebuilt
from the manifest (task, model, n, seed, holdout), so they are the run's own.  The model is loaded once
for runs of the same model.  Plain (non-positional) edge runs only.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path


def scores_of(run: Path, graph):
    """The run's ``scores.tsv`` as a Scores over ``graph`` (unscored edges 0)."""
    import torch

    from circuits.methods.base import Scores

    values = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.float64)
    with open(run / "scores.tsv") as fh:
        next(fh)
        for line in fh:
            name, _, text = line.rstrip("\n").partition("\t")
            if text.strip():
                values[graph.edge_index(name)] = float(text)
    return Scores(graph=graph, method="read", edge_scores=values)


def coarse_bracket(f, k0: int, n: int, target: float, tolerance: float) -> dict:
    """k -> f(k) for ks that bracket the smallest passing k within ``tolerance`` (relative): from ``k0``,
    halve (or double) until the target is crossed, then bisect until ``hi - lo <= tolerance * hi``.  Every
    value not evaluated is treated as failing, so the exact search afterwards needs only the last steps."""
    known = {}
    k = max(1, min(k0, n))
    known[k] = f(k)
    if known[k] >= target:
        hi, lo = k, 0
        while k > 1:
            k //= 2
            known[k] = f(k)
            if known[k] < target:
                lo = k
                break
            hi = k
    else:
        lo, hi = k, None
        while k < n:
            k = min(2 * k, n)
            known[k] = f(k)
            if known[k] >= target:
                hi = k
                break
            lo = k
        if hi is None:
            return known
    while hi - lo > max(1, tolerance * hi):
        mid = (lo + hi) // 2
        known[mid] = f(mid)
        lo, hi = (lo, mid) if known[mid] >= target else (mid, hi)
    # everything between lo and hi is unknown: mark the bracket's inside as failing so the search stops at hi
    for k in range(lo + 1, hi):
        known[k] = -math.inf
    return known


def heldout_size(engine, tokenizer, run: Path, target: float, tolerance: float = 0.0) -> dict:
    from circuits.circuit.discover import split_holdout
    from circuits.circuit.ranking import n_units
    from circuits.circuit.ranking import evaluation_mask
    from circuits.circuit.select import circuit_mask
    from circuits.circuit.faithfulness import CircuitEvaluator
    from circuits.circuit.select import target_faithfulness
    from circuits.methods.metrics import build_metric
    from circuits.registry import get_task

    m = json.loads((run / "manifest.json").read_text())
    task = get_task(m["task"])
    dataset = task.build(tokenizer, n=int(m["n"]), seed=int(m["seed"]))
    _, heldout = split_holdout(dataset, float(m["holdout"]), seed=int(m["seed"]))
    metric = build_metric(m.get("metric", "task"), task, engine, heldout)
    ranking = (m.get("selection") or {}).get("ranking", "abs")
    t = time.perf_counter()
    evaluator = CircuitEvaluator(engine, heldout, metric, ablation=m.get("ablation", "corrupted"))
    scores = scores_of(run, engine.graph)
    known = None
    if tolerance > 0:  # bracket around the run's own k, and stop once the bracket is within `tolerance` of it
        known = coarse_bracket(lambda k: evaluator.faithfulness(evaluation_mask(
            circuit_mask(scores, k, "edge", ranking), engine.graph, "edge")).f, int(m["selection"]["k"]),
            n_units(engine.graph, "edge"), target, tolerance)
    chosen = target_faithfulness(engine, heldout, metric, scores, None, target, evaluator=evaluator, ranking=ranking,
                                 known=known)
    return {"run": str(run), "method": m["method"], "ranking": ranking, "n_heldout": len(heldout), "target": target,
            "edges_at_target": int(chosen.edges_kept), "k": int(chosen.k), "faithfulness_heldout": chosen.faithfulness,
            "reached": bool(chosen.reached), "tolerance": tolerance, "edges_selected_on_scored": m.get("edges_kept"),
            "faithfulness_heldout_of_selected": m.get("faithfulness_heldout"), "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="stop once the smallest passing k is known within this fraction (0: exact; 0.01 saves "
                         "about half the evaluations)")
    args = ap.parse_args()

    from circuits.jobs.common import load_engine
    from circuits.models import load_model

    loaded = {}
    rows = []
    for run in args.runs:
        model = json.loads((run / "manifest.json").read_text())["model"]
        if model not in loaded:
            loaded.clear()
            loaded[model] = load_engine(load_model, model, "cpu")
        tokenizer, engine = loaded[model]
        rows.append(heldout_size(engine, tokenizer, run, args.target, args.tolerance))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # each run as it finishes
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| run | method | ranking | edges at held-out f >= %g | held-out f | edges chosen on scored prompts (held-out f) |"
          % args.target)
    print("|---|---|---|---|---|---|")
    for r in rows:
        f = r["faithfulness_heldout"]
        sel = r["faithfulness_heldout_of_selected"]
        print(f"| {r['run']} | {r['method']} | {r['ranking']} | {r['edges_at_target']:,}{'' if r['reached'] else ' (not reached)'}"
              f" | {f:.3f} | {r['edges_selected_on_scored']:,} ({'-' if sel is None or math.isnan(sel) else f'{sel:.3f}'}) |")


if __name__ == "__main__":
    main()
