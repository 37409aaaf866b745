#!/usr/bin/env python
"""How long ACDC would take on a model: its per-test cost measured at a few receiver layers, times the
edge tests of a full sweep (every receiver alive: one test per edge, the most ACDC can make).

    .venv/bin/python scripts/acdc_projection.py --model M [--task greater-than] [--n 20] [--every 3]

The cost of a test at a layer between two measured ones is interpolated linearly.  A real run with
``tau > 0`` makes fewer tests (a receiver with no path left to the logits is skipped untested), so
this is an upper bound for the tests and the measured cost for each.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default="greater-than")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=3, help="measure every N-th layer (and the logits)")
    args = ap.parse_args(argv)

    import torch

    from bench_acdc import layer_costs, sweep_tests
    from circuits.engine.engine import GraphEngine
    from circuits.models import load_model
    from circuits.registry import get_task
    from circuits.methods.base import MethodOptions

    loaded = load_model(args.model)
    task = get_task(args.task)
    data = task.build(loaded.tokenizer, n=args.n, seed=args.seed)
    engine = GraphEngine.from_model(loaded)
    g = engine.graph
    with torch.no_grad():
        engine.run(data.clean, data.answer_pos)
        t0 = time.perf_counter()
        engine.run(data.clean, data.answer_pos)
        forward = time.perf_counter() - t0
    layers = sorted(set(range(0, g.n_layers, args.every)) | {g.n_layers - 1, g.n_layers})
    measured = layer_costs(engine, data, task.metric, MethodOptions(), layers)
    tests = sweep_tests(g)
    total = 0.0
    print(f"{args.model}: {g.n_layers} layers x {g.n_heads} heads, {sum(tests.values())} edges; "
          f"{len(data)} prompts x {data.clean.shape[1]} tokens; one engine forward {forward:.3f} s")
    print("layer  edge tests  s per test  x forward")
    for layer in range(g.n_layers + 1):
        lo = max(k for k in layers if k <= layer)
        hi = min(k for k in layers if k >= layer)
        cost = measured[lo] if lo == hi else measured[lo] + (measured[hi] - measured[lo]) * (layer - lo) / (hi - lo)
        total += tests[layer] * cost
        flag = "" if layer in measured else "  (interpolated)"
        print(f"{layer:5d}  {tests[layer]:10d}  {cost:10.4f}  {cost / forward:9.3f}{flag}")
    n_tests = sum(tests.values())
    print(f"full sweep: {n_tests} edge tests, projected {total:.0f} s = {total / 3600:.1f} h "
          f"({total / n_tests:.3f} s per test on average, {total / n_tests / forward:.3f}x one forward)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
