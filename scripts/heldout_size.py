"""The size of a run's circuit at held-out faithfulness >= F: the target search run on the held-out prompts.

    .venv/bin/python scripts/heldout_size.py RUN [RUN ...] [--target 0.9] [--json]

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


def heldout_size(engine, tokenizer, run: Path, target: float) -> dict:
    from circuits.circuit.discover import split_holdout
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
    chosen = target_faithfulness(engine, heldout, metric, scores_of(run, engine.graph), None, target,
                                 evaluator=evaluator, ranking=ranking)
    return {"run": str(run), "method": m["method"], "ranking": ranking, "n_heldout": len(heldout), "target": target,
            "edges_at_target": int(chosen.edges_kept), "k": int(chosen.k), "faithfulness_heldout": chosen.faithfulness,
            "reached": bool(chosen.reached), "edges_selected_on_scored": m.get("edges_kept"),
            "faithfulness_heldout_of_selected": m.get("faithfulness_heldout"), "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--json", action="store_true")
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
        rows.append(heldout_size(engine, tokenizer, run, args.target))
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
