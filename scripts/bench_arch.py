#!/usr/bin/env python
"""Benchmark rows for the architecture families and against TransformerLens 4.3's own edge attribution patching.

    python scripts/bench_arch.py [--quick] [--families qwen3,gemma2] [--tl-prompts 20] [--no-tl] [--out bench-arch.json]

``families``: for each family of ``circuits.models.tiny`` a random model of one small shape (4 layers, width
256, 8 query heads over 2 key/value heads; GPT-NeoX 8 heads), ``--prompts`` greater-than prompts: the time of
EAP (``circuits``'s engine, float32) as a ratio to that HF model's plain forward+backward (every weight
requiring grad, ``metric.mean().backward()``, as bench.py's forward_backward row), and to the same pass with
the weights frozen and the input embeddings requiring grad; fastest of ``--repeats`` runs, one CPU thread.

``transformer_lens``: GPT-2 small's shape with random weights (the main bench's model; ``--quick``: its tiny
GPT-2 and 5 prompts), ``--tl-prompts`` prompts:
TransformerLens 4.3's ``attribution_patch(bridge, clean, corrupted, metric, EdgeAttributionConfig(granularity=
"edge"))`` against our EAP on the same weights and prompts, in the same process, with the same metric (the
logit difference of two fixed tokens at the answer position: TransformerLens calls the metric on one
example's logits, without its index).  Also bench.py's section ``architectures``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
             head_dim=32, initializer_range=0.02)
NEOX_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8)
TARGET_FAMILY = 1.3  # EAP / forward+backward
TARGET_TL = 15.0  # TransformerLens edge attribution / ours


def fastest(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def family_rows(families, prompts: int, repeats: int) -> list:
    from circuits.engine.engine import GraphEngine
    from circuits.models.hf_weights import hf_weights
    from circuits.models.tiny import tiny_model
    from circuits.models.tokenizers import gpt2_tokenizer
    from circuits.registry import get_method
    from circuits.data.task import answer_logits
    from circuits.tasks.greater_than import GreaterThan

    tok = gpt2_tokenizer()
    task = GreaterThan()
    data = task.build(tok, n=prompts, seed=0)
    eap = get_method("eap")
    rows = []
    for family in families:
        shape = NEOX_SHAPE if family == "gpt_neox" else SHAPE
        if family == "olmo2":
            shape = {k: v for k, v in shape.items() if k != "head_dim"}
        model = tiny_model(family, tok, **shape).float()
        for p in model.parameters():
            p.requires_grad_(True)
        engine = GraphEngine(hf_weights(model))

        def forward_backward():
            model.zero_grad(set_to_none=True)
            task.metric(answer_logits(model(data.clean).logits, data), data).mean().backward()

        def inputs_only():  # the weights frozen, the input embeddings requiring grad
            embeds = model.get_input_embeddings()(data.clean).detach().requires_grad_(True)
            for p in model.parameters():
                p.requires_grad_(False)
            try:
                task.metric(answer_logits(model(inputs_embeds=embeds).logits, data), data).mean().backward()
            finally:
                for p in model.parameters():
                    p.requires_grad_(True)

        def attribution():
            eap.score(engine, data, task.metric)

        forward_backward(), inputs_only(), attribution()  # warm up
        fb, fb_in, ours = fastest(forward_backward, repeats), fastest(inputs_only, repeats), fastest(attribution, repeats)
        rows.append({"family": family, "eap_seconds": ours, "forward_backward_seconds": fb, "ratio": ours / fb,
                     "forward_backward_inputs_seconds": fb_in, "ratio_to_inputs_only": ours / fb_in,
                     "target": TARGET_FAMILY, "met": ours / fb <= TARGET_FAMILY})
        print(f"  {family:<10} EAP {ours:7.3f} s  forward+backward {fb:7.3f} s  ratio {ours / fb:5.2f}x  "
              f"(to forward+backward of the inputs only, {fb_in:.3f} s: {ours / fb_in:4.2f}x)", flush=True)
    return rows


def tl_row(folder: Path, prompts: int, repeats: int, shape: str = "gpt2-small shape (random)",
           target: Optional[float] = TARGET_TL) -> dict:
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch

    from circuits.engine.engine import GraphEngine
    from circuits.models import load_model
    from circuits.registry import get_method
    from circuits.tasks.greater_than import GreaterThan

    loaded = load_model(str(folder))
    engine = GraphEngine.from_model(loaded, check=False)
    data = GreaterThan().build(loaded.tokenizer, n=prompts, seed=0)
    pos = int(data.answer_pos[0])
    assert bool((data.answer_pos == pos).all()), "the prompts must share their answer position"
    a, b = 1000, 2000

    def ours_metric(logits, part):
        return logits[:, a] - logits[:, b]

    def tl_metric(logits):
        return logits[0, pos, a] - logits[0, pos, b]

    eap = get_method("eap")

    def ours():
        return eap.score(engine, data, ours_metric).edge_scores

    def theirs():
        return attribution_patch(loaded.bridge, data.clean, data.corrupted, tl_metric, EdgeAttributionConfig(granularity="edge"))

    ours()
    t_ours = fastest(ours, repeats)
    t_tl = fastest(theirs, 1)
    row = {"model": shape, "prompts": prompts, "ours_eap_seconds": t_ours,
           "transformer_lens_edge_seconds": t_tl, "speedup": t_tl / t_ours, "target": target,
           "met": None if target is None else t_tl / t_ours >= target}
    print(f"  TransformerLens 4.3 attribution_patch(granularity='edge') {t_tl:8.2f} s; ours (EAP) {t_ours:6.2f} s: "
          f"ours {t_tl / t_ours:.1f}x faster", flush=True)
    return row


def run(*, quick: bool, families=None, prompts=None, tl_prompts=20, repeats=3, tl: bool = True) -> dict:
    import torch

    from circuits.models.tiny import FAMILIES

    torch.set_num_threads(1)
    prompts = prompts or (10 if quick else 20)
    out = {"families": family_rows(families or list(FAMILIES), prompts, repeats), "prompts": prompts}
    if tl:
        sys.path.insert(0, str(HERE))
        from bench import FULL, QUICK, model_folder

        if quick:  # the smoke run: the quick bench's tiny GPT-2 and 5 prompts
            out["transformer_lens"] = tl_row(model_folder(QUICK["model"], 0), min(tl_prompts, 5), 1, shape="tiny gpt2",
                                             target=None)  # the target is for GPT-2 small's shape
        else:
            out["transformer_lens"] = tl_row(model_folder(FULL["model"], 0), tl_prompts, repeats)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--families", default=None, help="comma-separated (default: every family)")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--tl-prompts", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-tl", action="store_true")
    ap.add_argument("--out", default="bench-arch.json")
    args = ap.parse_args(argv)
    out = run(quick=args.quick, families=args.families.split(",") if args.families else None, prompts=args.prompts,
              tl_prompts=args.tl_prompts, repeats=args.repeats, tl=not args.no_tl)
    from circuits.atomic import write_atomic

    write_atomic(args.out, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
