"""The scale sections of ``scripts/bench.py``: streaming over prompts, a 1B-parameter model, the GPU plan.

- **streaming**: EAP's peak memory and time at n = 100, 400 and 1600 with ``--batch-size 50``
  (target: the peak at the largest n is at most 1.1x the peak at the smallest; time linear in n).
- **large**: EAP on random Llama-shaped weights of about 1B parameters (16 layers, d_model 2048,
  32 heads with 8 key/value heads, FFN 5632, GPT-2's vocabulary) at n = 32 in bfloat16, batches of 8.
- **cuda plan** (``--device cuda``): forward, forward+backward, EAP and EAP-IG on GPT-2 small's shape
  at 100 and 1000 prompts, and EAP on the 1B shape in bfloat16; written to ``bench-cuda.json``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List

STREAM = {"prompts": (100, 400, 1600), "batch_size": 50}
STREAM_QUICK = {"prompts": (10, 40), "batch_size": 5}
STREAM_MEMORY_LIMIT = 1.1
LLAMA_1B = {"n_layers": 16, "d_model": 2048, "n_heads": 32, "n_kv_heads": 8, "d_mlp": 5632}
LLAMA_QUICK = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_mlp": 128}
LARGE = {"prompts": 32, "batch_size": 8, "dtype": "bfloat16"}
LARGE_QUICK = {"prompts": 4, "batch_size": 2, "dtype": "bfloat16"}
CPU_MEMORY_BYTES = 24 * 2 ** 30  # this project's CPU machine
CUDA_PROMPTS = (100, 1000)
CUDA_QUICK_PROMPTS = (4, 8)


def streaming(measure: Callable, spec: Callable, *, quick: bool, table: Callable, mib: Callable, fit_line: Callable) -> Dict[str, Any]:
    """EAP at growing n with a fixed batch: peaks and times, the peak ratio and a linear fit of time."""
    plan = STREAM_QUICK if quick else STREAM
    b = plan["batch_size"]
    print(f"\nStreaming: EAP with --batch-size {b} at n = {', '.join(map(str, plan['prompts']))}")
    points = []
    for k in plan["prompts"]:
        r = measure(spec("eap", "method", prompts=k, method="eap", options={"batch_size": b}), f"eap ({k} prompts, batch {b})")
        points.append({"prompts": k, "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
                       "seconds_per_prompt": r["seconds"] / k, "peak_memory_bytes": r["peak_memory_bytes"],
                       "growth_bytes": r["peak_memory_bytes"] - r["memory_before_bytes"]})
    xs = [p["prompts"] for p in points]
    fit = {"wall": fit_line(xs, [p["seconds"] for p in points]), "cpu": fit_line(xs, [p["cpu_seconds"] for p in points])}
    ratio = points[-1]["peak_memory_bytes"] / points[0]["peak_memory_bytes"]
    print(table(["prompts", "EAP s", "ms/prompt", "CPU s", "peak MiB", "growth MiB"],
                [[str(p["prompts"]), f"{p['seconds']:.2f}", f"{1000 * p['seconds_per_prompt']:.1f}", f"{p['cpu_seconds']:.2f}",
                  mib(p["peak_memory_bytes"]), mib(p["growth_bytes"])] for p in points]))
    print(f"  linear fit: {fit['wall']['intercept']:.2f} s + {1000 * fit['wall']['slope']:.1f} ms/prompt (R^2 {fit['wall']['r2']:.3f}); "
          f"CPU time R^2 {fit['cpu']['r2']:.3f}")
    ok = ratio <= STREAM_MEMORY_LIMIT
    print(f"{'PASS' if ok else 'FAIL'}: EAP peak at n={xs[-1]} <= {STREAM_MEMORY_LIMIT}x its peak at n={xs[0]} "
          f"(batch {b}): {ratio:.3f}")
    return {"batch_size": b, "points": points, "fit": fit, "peak_ratio": ratio,
            "target": {"target": f"EAP peak at n={xs[-1]} <= {STREAM_MEMORY_LIMIT}x peak at n={xs[0]}",
                       "value": ratio, "limit": STREAM_MEMORY_LIMIT, "pass": ok}}


def large(measure: Callable, spec: Callable, *, quick: bool, mib: Callable, memory_limit: int = CPU_MEMORY_BYTES) -> Dict[str, Any]:
    """EAP on the random 1B Llama shape (a tiny one with --quick) in bfloat16."""
    shape, plan = (LLAMA_QUICK, LARGE_QUICK) if quick else (LLAMA_1B, LARGE)
    print(f"\nLarge model: EAP on random Llama-shaped weights {shape}, {plan['dtype']}, "
          f"{plan['prompts']} prompts in batches of {plan['batch_size']}")
    r = measure(spec("eap_llama", "llama_method", prompts=plan["prompts"], llama=shape, dtype=plan["dtype"], repeats=1,
                     options={"batch_size": plan["batch_size"]}), "eap (llama shape)")
    info = r["info"]
    ok = r["peak_memory_bytes"] <= memory_limit and info.get("finite_scores", False)
    print(f"  {info['parameters'] / 1e9:.3f} B parameters, {info['seq_len']} tokens per prompt: {r['seconds']:.1f} s "
          f"(CPU {r['cpu_seconds']:.1f} s), peak {mib(r['peak_memory_bytes'])} MiB (growth "
          f"{mib(r['peak_memory_bytes'] - r['memory_before_bytes'])} MiB); weights built in {info['build_seconds']:.1f} s")
    print(f"{'PASS' if ok else 'FAIL'}: 1B-shape EAP completes within {memory_limit / 2 ** 30:.0f} GiB with finite scores")
    return {"shape": shape, **plan, "parameters": info["parameters"], "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
            "peak_memory_bytes": r["peak_memory_bytes"], "memory_before_bytes": r["memory_before_bytes"],
            "seq_len": info["seq_len"], "score_dtype": info.get("score_dtype"), "finite_scores": info.get("finite_scores"),
            "target": {"target": f"1B-shape EAP peak <= {memory_limit / 2 ** 30:.0f} GiB", "value": r["peak_memory_bytes"],
                       "limit": memory_limit, "pass": ok}}


def cuda_plan(spec: Callable, *, quick: bool) -> List[Dict[str, Any]]:
    """The GPU rows: GPT-2-small shape at 100 and 1000 prompts, then EAP on the 1B shape in bfloat16."""
    rows = []
    for k in (CUDA_QUICK_PROMPTS if quick else CUDA_PROMPTS):
        rows += [spec(f"forward@{k}", "bridge_forward", prompts=k, repeats=1),
                 spec(f"forward_backward@{k}", "bridge_fb", prompts=k, repeats=1),
                 spec(f"eap@{k}", "method", prompts=k, method="eap", repeats=1),
                 spec(f"eap_ig@{k}", "method", prompts=k, method="eap-ig", options={"ig_steps": 5}, repeats=1)]
    shape, plan = (LLAMA_QUICK, LARGE_QUICK) if quick else (LLAMA_1B, LARGE)
    rows.append(spec("eap_llama_1b_bf16", "llama_method", prompts=plan["prompts"], llama=shape, dtype=plan["dtype"],
                     repeats=1, options={"batch_size": plan["batch_size"]}))
    return rows


def run_cuda(measure: Callable, spec: Callable, *, quick: bool, table: Callable, mib: Callable) -> Dict[str, Any]:
    """Measure the GPU plan; rows with their ratio to forward+backward at the same n."""
    results = {s["name"]: measure(s, s["name"]) for s in cuda_plan(spec, quick=quick)}
    rows = []
    for name, r in results.items():
        k = name.split("@")[1] if "@" in name else None
        fb = results.get(f"forward_backward@{k}") if k else None
        rows.append({"name": name, "prompts": r["info"]["prompts"], "seconds": r["seconds"], "peak_memory_bytes": r["peak_memory_bytes"],
                     "ratio_to_forward_backward": None if fb is None else r["seconds"] / fb["seconds"],
                     "details": r["info"]})
    print(table(["measurement", "prompts", "seconds", "x fwd+bwd", "peak MiB"],
                [[row["name"], str(row["prompts"]), f"{row['seconds']:.3f}",
                  "" if row["ratio_to_forward_backward"] is None else f"{row['ratio_to_forward_backward']:.2f}x",
                  mib(row["peak_memory_bytes"])] for row in rows]))
    return {"measurements": rows}
