"""The agreement table of the fast methods with a gold edge-patching run, on one model and task.

    nice -n 10 .venv/bin/python scripts/agreement_table.py --model SMOLLM2.gguf --task greater-than --n 20 \\
        --sample 3000 [--methods eap eap-ig:5 eap-ig:20 gim relp] [--out runs/agreement]

Scores every method on the same prompts in this one process (the model loaded once), times each
``score`` call, and prints ``circuits agreement``'s table (the same figures: circuits/agreement.py).
With ``--out``, each method's scores and a small manifest are written to ``OUT/METHOD`` so that
``circuits agreement OUT/eap ... --gold OUT/edge-patching`` gives the table again.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from circuits.bench.agreement import RunScores, agreement, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--task", default="greater-than")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample", type=int, default=3000, help="edges of the gold run (0: every edge)")
    ap.add_argument("--methods", nargs="*", default=["eap", "eap-ig:5", "eap-ig:20", "gim", "relp"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cpu", help="torch device, as for discover (cpu, cuda)")
    args = ap.parse_args()

    import torch

    from circuits.engine.engine import GraphEngine
    from circuits.graphs.compare import write_scores
    from circuits.methods.base import MethodOptions
    from circuits.models import load_model
    from circuits.registry import get_method, get_task

    torch.manual_seed(0)
    loaded = load_model(args.model, device=args.device)
    engine = GraphEngine.from_model(loaded)
    task = get_task(args.task)
    data = task.build(loaded.tokenizer, n=args.n, seed=args.seed)
    g = engine.graph
    print(f"{args.model}: {g.n_edges} edges; {args.task}, n = {args.n}", flush=True)

    def run(label: str, method: str, params: dict) -> RunScores:
        t = time.perf_counter()

        def progress(done, total, message):
            if done == total or done % 250 == 0:
                print(f"  {label}: {message} ({time.perf_counter() - t:.0f} s)", flush=True)

        scores = get_method(method).score(engine, data, task.metric, MethodOptions(params=params), progress=progress)
        seconds = time.perf_counter() - t
        mask = scores.scored if scores.scored is not None else g.valid_mask().bool()
        values = {g.edge_name(s, r): (float(scores.edge_scores[s, r]) if bool(mask[s, r]) else None) for s, r in g.edges()}
        print(f"{label}: {seconds:.1f} s", flush=True)
        if args.out is not None:
            folder = args.out / label.replace(":", "-")
            folder.mkdir(parents=True, exist_ok=True)
            write_scores(values, folder / "scores.tsv")
            (folder / "manifest.json").write_text(json.dumps({"method": label, "model": args.model, "task": args.task,
                                                              "n": args.n, "timings": {"scoring": seconds},
                                                              "method_info": {k: v for k, v in scores.info.items()
                                                                              if isinstance(v, (int, float, str))}}))
        return RunScores(folder=Path(label), method=label, model=args.model, seconds=seconds,
                         scores={k: v for k, v in values.items() if v is not None})

    gold = run("edge-patching", "edge-patching", {"sample": args.sample})
    rows = []
    for spec in args.methods:
        name, _, steps = spec.partition(":")
        rows.append(agreement(run(spec, name, {"ig_steps": int(steps)} if steps else {}), gold))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
