#!/usr/bin/env python
"""PD of the full model on every greater-than template: the family table in docs/results.md.

``circuits evaluate`` computes p(YY') for all 100 continuations (with digit tokens: one extra
forward per tens digit, 11 in all).  PD needs fewer: with ``t`` and ``u0`` the tens and units
digit of YY, a year in another decade is decided by its tens digit alone, so

    PD = sum_{d != t} s(d) P(d) + P(t) [sum_{u right of u0} P(u | t) - sum_{u wrong} P(u | t)]

(``s(d) = +1`` where the decade is right for the template's direction, ``-1`` where wrong): two
forwards per prompt.  This is the two-position PD of the metric contract (docs/architecture.md).
``evaluate``'s 100-year table weighs another decade by ``P(d) x sum_u P(u | d)`` instead of
``P(d)``, so the two differ only by the units digit's probability mass outside the ten digit
tokens; the script measures that difference on the first ``--check`` prompts of every template
(column ``check``) and stops if it exceeds ``--tolerance``.  With two-digit tokens (GPT-2) it is
one forward, reads the year tokens directly and equals ``evaluate``'s PD.

Usage: ``python scripts/family_pd.py --model M [--n 100] [--seed 0] [--tasks a,b] [--json OUT]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def fast_pd(task, forward, ds, batch_size: int = 50):
    import torch

    from circuits.tasks.greater_than import probability_difference

    greater = task.template.direction == "greater"
    out = []
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            part = ds.subset(slice(start, start + batch_size))
            prompts = part.clean[:, : part.info["prompt_len"]] if "prompt_len" in part.info else part.clean
            yy = torch.tensor([m["yy"] for m in part.metadata])
            probs = torch.softmax(forward(prompts)[:, -1].double(), -1)
            if ds.info["mode"] == "token":
                out.append(probability_difference(probs[:, ds.info["year_ids"]], yy, task.template.direction))
                continue
            digits = torch.tensor(ds.info["digit_ids"])
            p_tens = probs[:, digits]  # [b, 10]
            t, u0 = yy // 10, yy % 10
            forced = torch.cat([prompts, digits[t][:, None]], dim=1)
            p_units = torch.softmax(forward(forced)[:, -1].double(), -1)[:, digits]  # [b, 10] given the true tens
            d = torch.arange(10)
            right_d = d[None, :] > t[:, None] if greater else d[None, :] < t[:, None]
            other = torch.where(d[None, :] == t[:, None], 0.0, torch.where(right_d, 1.0, -1.0).double())
            right_u = d[None, :] > u0[:, None] if greater else d[None, :] < u0[:, None]
            same = (p_units * torch.where(right_u, 1.0, -1.0).double()).sum(-1)
            out.append((p_tens * other).sum(-1) + p_tens[torch.arange(len(part)), t] * same)
    return torch.cat(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", type=int, default=3, help="prompts per template checked against evaluate's PD")
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest |difference| from evaluate's PD accepted")
    parser.add_argument("--tasks", default="", help="comma-separated task names [default: greater-than and its family]")
    parser.add_argument("--json", default=None, help="append one JSON line per template to this file")
    args = parser.parse_args(argv)
    import torch

    from circuits.data.evaluation import model_forward
    from circuits.models import load_model
    from circuits.registry import get_task
    from circuits.tasks.greater_than_family import FAMILY

    names = [n for n in args.tasks.split(",") if n] or ["greater-than"] + [cls.name for cls in FAMILY]
    loaded = load_model(args.model)
    forward = model_forward(loaded)
    print(f"{'task':24} {'dir':7} {'n':>4} {'PD mean':>8} {'std':>6} {'PD>0':>5}  check  seconds", flush=True)
    for name in names:
        task = get_task(name)
        t0 = time.perf_counter()
        ds = task.build(loaded.tokenizer, n=args.n, seed=args.seed)
        pd = fast_pd(task, forward, ds)
        if args.check:
            small = ds.subset(slice(0, args.check))
            ref = task.evaluate(forward, small)["probability_difference"].double()
            err = float((ref - pd[: args.check]).abs().max())
            if err > args.tolerance:
                print(f"{name}: the two-forward PD differs from evaluate's by {err:.2e}", file=sys.stderr)
                return 1
        row = {"task": name, "direction": task.template.direction, "n": len(ds), "seed": args.seed,
               "model": args.model, "pd_mean": float(pd.mean()), "pd_std": float(pd.std()),
               "pd_positive": float((pd > 0).double().mean()), "check_max_abs": err if args.check else None,
               "seconds": time.perf_counter() - t0}
        print(f"{name:24} {row['direction']:7} {row['n']:>4} {row['pd_mean']:>+8.3f} {row['pd_std']:>6.3f} "
              f"{row['pd_positive']:>5.2f}  {row['check_max_abs'] or 0:.0e}  {row['seconds']:.0f}", flush=True)
        if args.json:
            with open(args.json, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
