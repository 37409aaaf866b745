#!/usr/bin/env python
"""Benchmark: the scoring methods against a plain forward and forward+backward pass.

    python scripts/bench.py [--quick] [--device cpu|cuda] [--sections main,scaling,streaming,large,architectures] [--out bench.json]

The model is GPT-2 small's shape (``GPT2Config()``: 12 layers, 12 heads, width 768) with
random weights (fixed seed) and GPT-2's real tokenizer, saved once under
``circuits.models.cache.cache_dir() / "bench"`` and loaded with ``load_model(folder)``; the
prompts are greater-than's. Every measurement runs in its own process (forked from a server
process that has only imported the libraries), so its peak memory is its own; the model is
loaded, the prompts built and the libraries warmed up before the clock starts, and the
fastest of ``--rounds`` x ``--repeats`` runs is kept (each round measures every row again,
so a change in the machine's load touches all rows alike). On the CPU each measurement uses
one thread by default (``--threads``): on a shared machine, multi-threaded kernels wait on
descheduled threads and small operations slow down by orders of magnitude. Times are noisy
on a shared machine all the same: compare the ratios, which are measured in the same run.

Rows: ``forward`` / ``forward_backward`` (the TransformerLens bridge: no_grad forward;
forward and ``metric.mean().backward()`` with every weight requiring grad, as in training),
``forward_backward_inputs`` (the same with the weights frozen and the input embeddings
requiring grad), ``engine_forward`` / ``engine_forward_backward`` (the graph engine's own),
``masked_forward_backward`` (the engine's pass under a real-valued keep over every edge that
gradients flow into, and its backward: a learned-mask step without the optimiser),
``edge_pruning_step`` (one edge-pruning optimisation step over the prompts, its batch's references
kept as the method keeps them), ``edge_pruning_n100`` / ``edge_pruning_n400`` (the whole method,
16 steps of 25 prompts, at n = 100 and 400: its peak must not grow with n),
``activation_patching`` (every head and MLP, and the residual stream at every layer input
and position), ``eap``, ``eap_ig`` (5 steps), ``path_patching`` (default threshold; on
random weights its search queues nearly every node, about one forward pass per edge, so
after ``--path-patching-budget`` seconds it stops and its full time is projected from the
nodes queued and the measured cost of a pass), ``faithfulness`` (one circuit: the top 1% of
edges by EAP) and ``eap_peer_style`` (EAP the way EAP-IG's and auto-circuit's code computes
it: TransformerLens's per-head flags and hooks that store every sender's output and every
receiver input's gradient), ``acdc`` and ``acdc_naive`` (20 prompts, the first ``--acdc-tests``
edge tests with tau 0: ours, and ACDC the way its code runs, one hooked full forward per test;
see ``bench_acdc.py``), and ``eap_positional`` (EAP by span of greater-than's schema, ``discover --positions``;
its target is a ratio to ``eap``: run ``--only eap eap_positional``).

Then EAP and forward+backward against the number of prompts and the model's depth; EAP with
``--batch-size 50`` at n = 100, 400 and 1600 (its peak must not grow with n); and EAP on a
random Llama-shaped model of 0.93B parameters in bfloat16 (``scripts/bench_scale.py``).
Section ``architectures`` (``scripts/bench_arch.py``): EAP per architecture family as a ratio to
that model's forward+backward, and TransformerLens 4.3's edge ``attribution_patch`` against our
EAP on GPT-2 small's shape, n = 20.
``--device cuda`` runs the GPU plan instead (``bench_scale.cuda_plan``: GPT-2-small shape at 100
and 1000 prompts, the 1B shape in bfloat16) and writes bench-cuda.json.
Results go to ``--out`` (bench.json), written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

from circuits.engine.architectures import CHECK_LENGTH  # torch-free: the parent process imports no torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_scale  # noqa: E402  (next to this script)

SECTIONS = ("main", "scaling", "streaming", "large", "architectures")
MAIN_NAMES = ("forward", "forward_backward", "activation_patching", "eap", "eap_ig", "path_patching",
              "faithfulness", "eap_peer_style")
EXTRA_NAMES = ("forward_backward_inputs", "engine_forward", "engine_forward_backward", "acdc", "acdc_naive", "load",
               "load_checked", "load_checked_first", "eap_positional", "masked_forward_backward",
               "edge_pruning_step", "edge_pruning_n100", "edge_pruning_n400", "gim", "relp", "edge_patching")
MASK_BATCH, MASK_STEPS = 25, 16  # edge-pruning's memory rows: 16 steps of 25 prompts at n = 100 and n = 400

# GPT2Config() defaults: 12 layers, 12 heads, width 768, 1024 positions, vocabulary 50257
FULL = {"model": {"n_layer": 12, "n_head": 12, "n_embd": 768}, "prompts": 100,
        "scaling_prompts": (25, 50, 100, 200), "scaling_layers": (2, 6, 12)}
QUICK = {"model": {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 64}, "prompts": 10,
         "scaling_prompts": (5, 10), "scaling_layers": (1, 2)}
IG_STEPS = 5
ACDC_PROMPTS = 20
ACDC_TESTS = {"full": 160, "quick": 40}  # the fixed edge-test budget of both ACDC rows
EDGE_PATCHING_EDGES = {"full": 100, "quick": 60}  # edge_patching: a random sample of this many edges
ACDC_TAU = 0.0  # every edge kept: on random weights a real tau removes nearly everything at once and skips the rest
CIRCUIT_FRACTION = 0.01
PEER_TOLERANCE = 1e-4  # max |ours - peer| relative to max |score|
PRELOAD = ["torch", "transformers", "transformer_lens.model_bridge", "bench_work"]

TARGETS = (
    # (label, measured value key, limit)
    ("EAP time <= 2.5x forward_backward", "eap_time_ratio", 2.5),
    ("EAP-IG(5) time <= 7x forward_backward", "eap_ig_time_ratio", 7.0),
    ("EAP peak memory <= 1.5x forward_backward's peak", "eap_memory_ratio", 1.5),
    ("GIM time <= 1.3x forward_backward", "gim_time_ratio", 1.3),
    ("RelP time <= 1.3x forward_backward", "relp_time_ratio", 1.3),
    ("EAP faster than eap_peer_style (EAP / peer-style < 1)", "eap_vs_peer_ratio", 1.0),
    ("ACDC >= 10x faster per edge test than naive ACDC (ours / naive <= 0.1)", "acdc_vs_naive_ratio", 0.1),
    ("Loading with the engine's checks <= 1.1x loading without (the logit check remembered)", "load_check_ratio", 1.1),
    ("Positional EAP (per span, greater-than's 7 spans) time <= 1.5x EAP", "eap_positional_ratio", 1.5),
)


# --------------------------------------------------------------------------- model
def architectures(quick: bool) -> Dict[str, Any]:
    """``bench_arch.py``'s rows (EAP per architecture family; TransformerLens's edge attribution), in their own process."""
    import subprocess
    import tempfile

    print("\nArchitectures: EAP / forward+backward per family; TransformerLens 4.3's edge attribution_patch vs our EAP",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "arch.json"
        cmd = [sys.executable, str(HERE / "bench_arch.py"), "--out", str(out)] + (["--quick"] if quick else [])
        if subprocess.run(cmd).returncode != 0:
            return {"error": "bench_arch.py failed"}
        return json.loads(out.read_text())


def model_folder(config: Dict[str, int], seed: int) -> Path:
    """The benchmark model's HF folder in the circuits cache, built (atomically) the first time."""
    from circuits.models.cache import cached_folder

    key = "bench/gpt2-" + "-".join(f"{k}{v}" for k, v in sorted(config.items())) + f"-seed{seed}"

    def build(out: Path) -> None:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel

        from circuits.models.tokenizers import gpt2_tokenizer

        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.manual_seed(seed)
        GPT2LMHeadModel(GPT2Config(**config)).eval().save_pretrained(out)
        gpt2_tokenizer().save_pretrained(out)

    return cached_folder(key, build)


# --------------------------------------------------------------------------- processes
class Runner:
    """Runs each measurement in a fresh process forked from a server that has only imported the libraries."""

    def __init__(self, start_method: str, timeout: Optional[float]):
        import multiprocessing as mp

        if start_method == "forkserver" and "forkserver" not in mp.get_all_start_methods():
            start_method = "spawn"
        self.ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            self.ctx.set_forkserver_preload(PRELOAD)
        self.start_method = start_method
        self.timeout = timeout

    def run(self, spec: Dict[str, Any]) -> Dict[str, Any]:
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=child, args=(spec, send), name=f"bench-{spec['name']}")
        proc.start()
        send.close()
        try:
            if not recv.poll(self.timeout):
                proc.kill()
                raise RuntimeError(f"{spec['name']}: no result within {self.timeout:.0f} s")
            status, payload = recv.recv()
        except EOFError:
            proc.join()
            raise RuntimeError(f"{spec['name']}: the measurement's process died (exit code {proc.exitcode}; out of memory?)")
        finally:
            recv.close()
        proc.join()
        if status != "ok":
            raise RuntimeError(f"{spec['name']} failed:\n{payload}")
        return payload


def child(spec: Dict[str, Any], conn) -> None:
    """A measurement's process: measure and send ``("ok", row)`` or ``("error", traceback)`` back."""
    try:
        import bench_work  # already imported by the process server

        conn.send(("ok", bench_work.measure(spec)))
    except BaseException:  # report anything, including KeyboardInterrupt, to the parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def merge_runs(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One row from the rounds' measurements: the fastest times, the largest peak memory."""
    out = dict(max(runs, key=lambda r: r["peak_memory_bytes"]))
    out["seconds"] = min(r["seconds"] for r in runs)
    out["cpu_seconds"] = min(r["cpu_seconds"] for r in runs)
    out["seconds_all"] = [t for r in runs for t in r["seconds_all"]]
    out["cpu_seconds_all"] = [t for r in runs for t in r["cpu_seconds_all"]]
    return out


# --------------------------------------------------------------------------- formatting
def duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds:.0f} s ({seconds / 3600:.1f} h)"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.2f} s"


def mib(n: float) -> str:
    return f"{n / 2 ** 20:,.0f}"


def table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def fit_line(xs: List[float], ys: List[float]) -> Dict[str, float]:
    """Least-squares ``y = intercept + slope * x`` and R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"intercept": intercept, "slope": slope, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def fb_graph_nodes(cfg: Dict[str, int]) -> int:
    """Heads and MLPs of the model: the nodes path patching can queue."""
    return cfg["n_layer"] * (cfg["n_head"] + 1)


def machine_info(device: str, threads: int) -> Dict[str, Any]:
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": version("torch"), "torch_threads": threads,
            "device": device, "python": platform.python_version(), "platform": platform.platform()}
    try:
        import psutil

        info["memory_bytes"] = int(psutil.virtual_memory().total)
    except ImportError:
        pass
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# --------------------------------------------------------------------------- main
def per_pass_costs(results: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Activation patching's cost per node (one partial forward per head, MLP or residual position) and path
    patching's cost per pass (one patched edge), as ratios to one forward pass over the same prompts
    (the engine's forward when measured, else the bridge's)."""
    forward_name = "engine_forward" if "engine_forward" in results else "forward"
    if forward_name not in results:
        return {}
    forward = results[forward_name]["seconds"]
    out: Dict[str, Dict[str, Any]] = {}
    if "activation_patching" in results:
        r = results["activation_patching"]
        passes = int(r["info"]["forward_passes"])
        out["activation_patching_per_node"] = {"seconds": r["seconds"] / passes, "passes": passes}
    if "path_patching" in results:
        r = results["path_patching"]
        info = r["info"]
        if info.get("complete") is False and "measured_seconds" in info:  # stopped by the bench's time budget
            seconds, passes = info["measured_seconds"], int(info["passes"])
        else:
            seconds, passes = r["seconds"], int(info.get("passes_used") or info["forward_passes"])
        out["path_patching_per_pass"] = {"seconds": seconds / passes, "passes": passes}
    for row in out.values():
        row.update(ratio_to_forward=row["seconds"] / forward, forward=forward_name.replace("_", " "))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke mode: a 2-layer, 4-head, width-64 model, 10 prompts, fewer scaling points")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--out", default=None, help="where to write the results (default ./bench.json; ./bench-cuda.json for the GPU plan)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated parts to run (default all: {','.join(SECTIONS)}); streaming: EAP at growing n "
                         "with a fixed batch; large: EAP on a 1B-parameter Llama shape in bfloat16")
    ap.add_argument("--plan", choices=("cpu", "cuda"), default=None,
                    help="cpu: the tables above; cuda (the default with --device cuda): forward, forward+backward, EAP and "
                         "EAP-IG at 100 and 1000 prompts and the 1B shape's EAP, written to bench-cuda.json")
    ap.add_argument("--prompts", type=int, default=None, help="prompts for the main table (default 100; 10 with --quick)")
    ap.add_argument("--peer-prompts", type=int, default=None, help="prompts for eap_peer_style only (default: --prompts)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds over the rows (default 2; 1 with --quick): each round measures every row again in a new "
                         "process, so drifts in the machine's load touch every row alike; the fastest run is kept "
                         "(activation and path patching: once, after the rounds)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per measurement process, fastest kept (default 1; 3 with --quick; always 1 for activation and path patching)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads per measurement (default 1: stable on a shared machine; 0: torch's default)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and of the prompts")
    ap.add_argument("--no-scaling", action="store_true", help="skip the scaling tables")
    ap.add_argument("--only", nargs="*", default=None, help="measure only these rows (forward_backward is always measured)")
    ap.add_argument("--start-method", default="forkserver", choices=("forkserver", "spawn"),
                    help="how each measurement's process starts (default forkserver: forked from a process that has only imported the libraries)")
    ap.add_argument("--path-patching-budget", type=float, default=None,
                    help="seconds after which path patching's search stops and its full time is projected "
                         "(default 300; none with --quick; 0: never stop)")
    ap.add_argument("--acdc-tests", type=int, default=None,
                    help=f"edge-test budget of the two ACDC rows (default {ACDC_TESTS['full']}; {ACDC_TESTS['quick']} with --quick)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds allowed per measurement (default: none)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda"):
        import torch  # only here: the measurements import it in their own processes

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device is available", file=sys.stderr)
            return 2
    cuda = args.device.startswith("cuda")
    plan_kind = args.plan or ("cuda" if cuda else "cpu")
    if args.out is None:
        args.out = "bench-cuda.json" if plan_kind == "cuda" else "bench.json"
    sections = {x.strip() for x in args.sections.split(",") if x.strip()}
    if sections - set(SECTIONS):
        print(f"--sections: unknown {', '.join(sorted(sections - set(SECTIONS)))}; use {','.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.no_scaling:
        sections.discard("scaling")
    preset = QUICK if args.quick else FULL
    if args.repeats is None:
        args.repeats = 3 if args.quick else 1
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    n = args.prompts or preset["prompts"]
    peer_n = args.peer_prompts or n
    pp_budget = args.path_patching_budget if args.path_patching_budget is not None else (0 if args.quick else 300)
    cfg = dict(preset["model"])
    acdc_n = min(ACDC_PROMPTS, n)
    acdc_tests = args.acdc_tests or ACDC_TESTS["quick" if args.quick else "full"]
    t_start = time.perf_counter()
    load_start = loadavg()
    folder = model_folder(cfg, args.seed)
    runner = Runner(args.start_method, args.timeout)

    def spec(name: str, kind: str, *, folder=folder, prompts=n, repeats=None, **extra) -> Dict[str, Any]:
        return {"name": name, "kind": kind, "model_dir": str(folder), "n": prompts, "seed": args.seed,
                "device": args.device, "repeats": args.repeats if repeats is None else repeats,
                "threads": args.threads if not args.device.startswith("cuda") else 0, **extra}

    if plan_kind == "cuda":
        return cuda_main(args, spec, runner, t_start, load_start)

    # the rows the targets compare run next to each other (the machine's load drifts); the long ones last
    plan = [
        spec("forward", "bridge_forward"),
        spec("forward_backward", "bridge_fb"),
        spec("eap", "method", method="eap"),
        spec("eap_positional", "method", method="eap", positions="sum"),
        spec("eap_ig", "method", method="eap-ig", options={"ig_steps": IG_STEPS}),
        spec("gim", "method", method="gim"),
        spec("relp", "method", method="relp"),
        spec("eap_peer_style", "peer", prompts=peer_n),
        spec("faithfulness", "faithfulness", fraction=CIRCUIT_FRACTION),
        spec("forward_backward_inputs", "bridge_fb_inputs"),
        spec("engine_forward", "engine_forward"),
        spec("engine_forward_backward", "engine_fb"),
        spec("masked_forward_backward", "masked_fb"),
        spec("edge_pruning_step", "mask_step"),
        spec("edge_pruning_n100", "method", prompts=100, method="edge-pruning", repeats=1,
             options={"batch_size": MASK_BATCH, "steps": MASK_STEPS}),
        spec("edge_pruning_n400", "method", prompts=400, method="edge-pruning", repeats=1,
             options={"batch_size": MASK_BATCH, "steps": MASK_STEPS}),
        spec("load", "load", repeats=1),
        spec("load_checked", "load_checked", repeats=1),
        spec("load_checked_first", "load_checked", repeats=1, fresh_cache=True),
        spec("activation_patching", "method", method="activation-patching", repeats=1),
        spec("path_patching", "method", method="path-patching", repeats=1, budget_s=pp_budget),
        spec("edge_patching", "method", method="edge-patching", repeats=1,
             options={"sample": EDGE_PATCHING_EDGES["quick" if args.quick else "full"], "sample_top": 0.0}),
        spec("acdc", "acdc", prompts=acdc_n, repeats=1, options={"max_tests": acdc_tests, "tau": ACDC_TAU}),
        spec("acdc_naive", "acdc_naive", prompts=acdc_n, repeats=1, options={"max_tests": acdc_tests, "tau": ACDC_TAU}),
    ]
    if args.only is not None or "main" not in sections:
        wanted = set(args.only or ()) | {"forward_backward"}
        plan = [s for s in plan if s["name"] in wanted]

    print(f"benchmark model: GPT-2 shape {cfg} (random weights, seed {args.seed}) in {folder}")
    print(f"{n} greater-than prompts; device {args.device}; fastest of {args.rounds} round(s) x {args.repeats} run(s) per row "
          f"(activation and path patching: 1); each measurement in its own process ({runner.start_method})"
          + (f"; {args.threads} CPU thread(s)" if not cuda else ""), flush=True)

    def measure(s: Dict[str, Any], label: str) -> Dict[str, Any]:
        t0 = time.perf_counter()
        res = runner.run(s)
        extra = ""
        if "forward_passes" in res["info"]:
            extra = f", {res['info']['forward_passes']} forward passes"
        if res["info"].get("complete") is False:
            extra = f" (projected), stopped after {res['info']['passes']} forward passes"
        print(f"  {label:<40} {res['seconds']:9.3f} s  (CPU {res['cpu_seconds']:8.3f} s)  peak {mib(res['peak_memory_bytes']):>7} MiB"
              f"{extra}   [{time.perf_counter() - t0:.0f} s with loading]", flush=True)
        return res

    once = {"activation_patching", "path_patching", "acdc", "acdc_naive", "edge_pruning_n100", "edge_pruning_n400",
            "edge_patching"}
    runs: Dict[str, List[Dict[str, Any]]] = {s["name"]: [] for s in plan}
    for rnd in range(args.rounds):
        for s in plan:
            if s["name"] not in once:
                runs[s["name"]].append(measure(s, s["name"] + (f" (round {rnd + 1})" if args.rounds > 1 else "")))
    for s in plan:
        if s["name"] in once:
            runs[s["name"]].append(measure(s, s["name"]))
    results: Dict[str, Dict[str, Any]] = {name: merge_runs(rs) for name, rs in runs.items()}
    effects = {name: results[name]["info"].pop("effects") for name in ("acdc", "acdc_naive") if name in results}

    fb = results["forward_backward"]
    rows = []
    for name in MAIN_NAMES + EXTRA_NAMES:
        if name not in results:
            continue
        r = results[name]
        rows.append({"name": name, "seconds": r["seconds"], "ratio_to_forward_backward": r["seconds"] / fb["seconds"],
                     "peak_memory_bytes": r["peak_memory_bytes"],
                     "details": {"cpu_seconds": r["cpu_seconds"], "cpu_ratio_to_forward_backward": r["cpu_seconds"] / fb["cpu_seconds"],
                                 "peak_memory_ratio_to_forward_backward": r["peak_memory_bytes"] / fb["peak_memory_bytes"],
                                 "seconds_all": r["seconds_all"], "cpu_seconds_all": r["cpu_seconds_all"],
                                 "memory_before_bytes": r["memory_before_bytes"], **r["info"]}})

    # ------------------------------------------------------------------ report
    print()
    print(f"Main table: GPT-2-shaped model {cfg}, {n} prompts x {fb['info']['seq_len']} tokens, device {args.device}")
    body = []
    for row in rows:
        d = row["details"]
        note = []
        if "forward_passes" in d:
            note.append(f"{d['forward_passes']} fwd" + (f" + {d['backward_passes']} bwd" if "backward_passes" in d else ""))
        if d.get("complete") is False:
            note.append(f"projected: >= {d['projected_passes_min']} fwd (stopped after {d['measured_seconds']:.0f} s, {d['passes']} fwd)")
        if row["name"] in ("forward_backward", "engine_forward_backward", "forward_backward_inputs"):
            note.append("grad: " + d["grad"].split(" (")[0].split(";")[0])
        if "faithfulness" in d:
            note.append(f"{d['edges']} edges, f={d['faithfulness']:.3f}")
        if "max_abs_diff_vs_eap" in d:
            note.append(f"|ours - peer| max {d['max_abs_diff_vs_eap']:.2e}")
        if row["name"] in ("acdc", "acdc_naive"):
            note.append(f"{d['prompts']} prompts, {d['edge_tests']} edge tests")
        if row["name"] == "eap_peer_style" and peer_n != n:
            note.append(f"{peer_n} prompts")
        body.append([row["name"], f"{row['seconds']:.3f}", f"{row['ratio_to_forward_backward']:.2f}x",
                     f"{d['cpu_seconds']:.3f}", f"{d['cpu_ratio_to_forward_backward']:.2f}x",
                     mib(row["peak_memory_bytes"]), f"{d['peak_memory_ratio_to_forward_backward']:.2f}x",
                     mib(row["peak_memory_bytes"] - d["memory_before_bytes"]), "; ".join(note)])
    print(table(["measurement", "seconds", "x fwd+bwd", "CPU s", "x (CPU)", "peak MiB", "x fwd+bwd peak",
                 "peak-start MiB", "notes"], body))
    print("seconds: wall clock, fastest of the runs; CPU s: the process's CPU time (less disturbed by other load).")
    print(f"forward_backward: {fb['info']['grad']}.")
    print(f"Peak memory: {fb['memory_method']}; peak-start: the growth during the measured work.")
    if "forward_backward_inputs" in results and "eap" in results:
        fbi = results["forward_backward_inputs"]
        print(f"EAP / forward_backward_inputs (weights frozen, input grads only): "
              f"{results['eap']['seconds'] / fbi['seconds']:.2f}x time (CPU {results['eap']['cpu_seconds'] / fbi['cpu_seconds']:.2f}x), "
              f"{results['eap']['peak_memory_bytes'] / fbi['peak_memory_bytes']:.2f}x peak memory")

    if "edge_pruning_step" in results:
        step = results["edge_pruning_step"]
        print(f"edge-pruning: one optimisation step over the {n} prompts = {step['seconds'] / fb['seconds']:.2f}x "
              f"forward_backward (CPU {step['cpu_seconds'] / fb['cpu_seconds']:.2f}x; target <= 3x)")
    if "edge_pruning_n100" in results and "edge_pruning_n400" in results:
        a, b = results["edge_pruning_n100"], results["edge_pruning_n400"]
        print(f"edge-pruning peak at n=400 / n=100 (batch {MASK_BATCH}, {MASK_STEPS} steps): "
              f"{b['peak_memory_bytes'] / a['peak_memory_bytes']:.3f} (growth {mib(a['peak_memory_bytes'] - a['memory_before_bytes'])}"
              f" -> {mib(b['peak_memory_bytes'] - b['memory_before_bytes'])} MiB)")

    values: Dict[str, tuple] = {}  # target key -> (wall-clock or memory ratio, CPU-time ratio or None)
    if "load" in results and "load_checked" in results:
        plain, checked = results["load"], results["load_checked"]
        values["load_check_ratio"] = (checked["seconds"] / plain["seconds"], checked["cpu_seconds"] / plain["cpu_seconds"])
        print(f"Loading: {plain['seconds']:.2f} s without the engine's checks, {checked['seconds']:.2f} s with them "
              f"({values['load_check_ratio'][0]:.3f}x; CPU {values['load_check_ratio'][1]:.3f}x)")
        if "load_checked_first" in results:
            first = results["load_checked_first"]
            print(f"  the first load of a model (empty cache: the logit check runs, two {CHECK_LENGTH}-token "
                  f"forwards): {first['seconds']:.2f} s ({first['seconds'] / plain['seconds']:.3f}x)")
    if "eap" in results:
        eap = results["eap"]
        values["eap_time_ratio"] = (eap["seconds"] / fb["seconds"], eap["cpu_seconds"] / fb["cpu_seconds"])
        values["eap_memory_ratio"] = (eap["peak_memory_bytes"] / fb["peak_memory_bytes"], None)
    if "eap_positional" in results and "eap" in results:
        pos, eap = results["eap_positional"], results["eap"]
        values["eap_positional_ratio"] = (pos["seconds"] / eap["seconds"], pos["cpu_seconds"] / eap["cpu_seconds"])
        print(f"Positional EAP / EAP: {values['eap_positional_ratio'][0]:.2f}x time (CPU {values['eap_positional_ratio'][1]:.2f}x), "
              f"{pos['peak_memory_bytes'] / eap['peak_memory_bytes']:.2f}x peak memory "
              f"({mib(pos['peak_memory_bytes'])} MiB against {mib(eap['peak_memory_bytes'])} MiB)")
    for name in ("gim", "relp"):
        if name in results:
            r = results[name]
            values[f"{name}_time_ratio"] = (r["seconds"] / fb["seconds"], r["cpu_seconds"] / fb["cpu_seconds"])
            if "eap" in results:
                print(f"{name} / eap time: {r['seconds'] / results['eap']['seconds']:.2f}x "
                      f"(CPU {r['cpu_seconds'] / results['eap']['cpu_seconds']:.2f}x)")
    forward = results.get("engine_forward") or results.get("forward")
    if "edge_patching" in results and forward is not None:
        ep = results["edge_patching"]
        per_edge = ep["seconds"] / ep["info"]["edges_scored"]
        ep["info"]["seconds_per_edge_over_forward"] = per_edge / forward["seconds"]
        print(f"edge_patching: {ep['info']['edges_scored']} random edges, {per_edge:.3f} s per edge = "
              f"{per_edge / forward['seconds']:.3f} of a forward ({'engine_forward' if 'engine_forward' in results else 'forward'}; "
              f"CPU {ep['cpu_seconds'] / ep['info']['edges_scored'] / forward['cpu_seconds']:.3f})")
    if "eap_ig" in results:
        ig = results["eap_ig"]
        values["eap_ig_time_ratio"] = (ig["seconds"] / fb["seconds"], ig["cpu_seconds"] / fb["cpu_seconds"])
    checks: Dict[str, Any] = {}
    if "eap" in results and "eap_peer_style" in results:
        peer = results["eap_peer_style"]
        per_prompt = (eap["seconds"] / n) / (peer["seconds"] / peer_n)
        values["eap_vs_peer_ratio"] = (per_prompt, (eap["cpu_seconds"] / n) / (peer["cpu_seconds"] / peer_n))
        diff, top = peer["info"]["max_abs_diff_vs_eap"], peer["info"]["max_abs_score"]
        tol = PEER_TOLERANCE * max(top, 1e-12)
        checks["peer_style_matches"] = {"max_abs_diff": diff, "max_abs_score": top, "tolerance": tol, "ok": diff <= tol}
        print()
        print(f"EAP / peer-style EAP time: {per_prompt:.3f} (CPU time {values['eap_vs_peer_ratio'][1]:.3f}); "
              f"peer-style is {1 / per_prompt:.2f}x slower" + ("" if peer_n == n else f" (per prompt; {peer_n} prompts for peer-style)"))
        print(f"EAP / peer-style EAP peak memory: {eap['peak_memory_bytes'] / peer['peak_memory_bytes']:.3f}")
        print(f"{'PASS' if checks['peer_style_matches']['ok'] else 'FAIL'}: peer-style scores match ours: "
              f"max |diff| {diff:.3e} (max |score| {top:.3e}, tolerance {PEER_TOLERANCE:g} x max |score|)")
    if "path_patching" in results:
        pp = results["path_patching"]["info"]
        if pp.get("complete") is False:
            print(f"path_patching: stopped at its budget ({pp['budget_s']:.0f} s) after {pp['measured_seconds']:.0f} s: "
                  f"{pp['passes']} forward passes, {pp['receivers_explored']} nodes explored, {pp['nodes_queued']} of "
                  f"{fb_graph_nodes(cfg)} nodes queued.  The queued nodes alone need >= {pp['projected_passes_min']} passes: "
                  f"projected {duration(pp['projected_seconds'])} at the measured cost per pass (the row's figure)")
        else:
            print(f"path_patching: {pp['forward_passes']} forward passes ({pp.get('receivers_explored')} nodes explored)")
    if "acdc" in results and "acdc_naive" in results:
        ours, naive = results["acdc"], results["acdc_naive"]
        oi, ni = ours["info"], naive["info"]
        per_ours, per_naive = ours["seconds"] / oi["edge_tests"], naive["seconds"] / ni["edge_tests"]
        cpu_ours, cpu_naive = ours["cpu_seconds"] / oi["edge_tests"], naive["cpu_seconds"] / ni["edge_tests"]
        values["acdc_vs_naive_ratio"] = (per_ours / per_naive, cpu_ours / cpu_naive)
        eo, en = effects["acdc"], effects["acdc_naive"]
        same = set(eo) == set(en)  # ours records tests whose effect is exactly 0 as untested
        diff = max((abs(eo.get(k, 0.0) - en[k]) for k in en), default=float("nan"))
        same = set(eo) <= set(en) and len(en) == oi["edge_tests"]
        checks["acdc_naive_matches"] = {"same_tests": same, "max_abs_effect_diff": diff, "ok": same and diff <= 1e-4}
        print()
        print(f"ACDC, {oi['prompts']} prompts, the first {oi['edge_tests']} edge tests (tau {oi['tau']:g}; receivers from the logits "
              f"back, so these tests are the logits' and the last layer's, where a restarted pass is cheapest):")
        print(f"  ours:  {1000 * per_ours:.2f} ms per edge test ({oi['passes']} batched passes), "
              f"{per_ours / oi['engine_forward_seconds']:.3f}x one engine forward of the {oi['prompts']} prompts")
        by_layer = oi["seconds_per_test_by_layer"]
        print("  ours, per edge test by the receiver's layer (full batches of candidates): " + ", ".join(
            f"layer {k}: {1000 * v:.2f} ms ({v / oi['engine_forward_seconds']:.2f}x forward)" for k, v in by_layer.items()))
        print(f"  naive: {1000 * per_naive:.2f} ms per edge test (one hooked full forward each), "
              f"{per_naive / ni['bridge_forward_seconds']:.2f}x one TransformerLens forward")
        print(f"  naive / ours per edge test: {per_naive / per_ours:.1f}x (CPU time {cpu_naive / cpu_ours:.1f}x); at a layer-0 receiver "
              f"(ours restarts at the input): {per_naive / by_layer['0']:.1f}x")
        sweep = oi["edge_tests_by_layer_full_sweep"]
        sweep_s = sum(sweep[k] * by_layer[k] for k in sweep)
        n_sweep = sum(sweep.values())
        values["acdc_full_sweep_speedup"] = (per_naive * n_sweep / sweep_s, None)  # informational (no target)
        print(f"  a full sweep with every receiver alive ({n_sweep} edge tests, weighted by layer): ours {duration(sweep_s)} "
              f"({1000 * sweep_s / n_sweep:.1f} ms per test), naive {duration(per_naive * n_sweep)}: "
              f"{per_naive * n_sweep / sweep_s:.1f}x (most tests are at late layers' receivers, which have the most senders, "
              f"but an early receiver's test costs ours nearly a whole forward)")
        print(f"{'PASS' if checks['acdc_naive_matches']['ok'] else 'FAIL'}: naive ACDC made the same tests"
              f" ({'yes' if same else 'no'}) with the same effects (max |diff| {diff:.2e})")
    if "activation_patching" in results:
        print(f"activation_patching: {results['activation_patching']['info']['forward_passes']} forward passes "
              "(every head and MLP, plus the residual stream at every layer input and position)")

    per_pass = per_pass_costs(results)
    for key, row in per_pass.items():
        print(f"{key}: {row['seconds']:.4f} s per pass = {row['ratio_to_forward']:.3f}x one {row['forward']} "
              f"({row['passes']} passes)")

    targets = []
    print()
    for label, key, limit in TARGETS:
        if key not in values:
            continue
        value, cpu_value = values[key]
        ok = value <= limit if key != "eap_vs_peer_ratio" else value < limit
        targets.append({"target": label, "value": value, "limit": limit, "pass": ok, "cpu_time_value": cpu_value})
        print(f"{'PASS' if ok else 'FAIL'}: {label}: {value:.2f}" + ("" if cpu_value is None else f" (CPU time: {cpu_value:.2f})"))

    # ------------------------------------------------------------------ scaling
    scaling: Dict[str, Any] = {}
    if "scaling" in sections and "eap" in results:
        L = cfg["n_layer"]
        points = [(k, L) for k in preset["scaling_prompts"]] + [(n, layers) for layers in preset["scaling_layers"]]
        points = list(dict.fromkeys(points))  # the (n, L) point once
        print("\nScaling: EAP and forward_backward measured again, back to back, at each point")
        measured: Dict[tuple, Dict[str, Dict[str, Any]]] = {}
        for k, layers in points:
            f = folder if layers == L else model_folder({**cfg, "n_layer": layers}, args.seed)
            measured[(k, layers)] = {
                "eap": measure(spec("eap", "method", folder=f, prompts=k, method="eap"), f"eap ({k} prompts, {layers} layers)"),
                "forward_backward": measure(spec("forward_backward", "bridge_fb", folder=f, prompts=k),
                                            f"forward_backward ({k} prompts, {layers} layers)")}
        scaling = {"prompts": [], "layers": [], "layers_prompts": n, "prompts_layers": L,
                   "note": "every point measured in the scaling pass (the main table's rows are not reused)"}
        for axis, unit, keys in (("prompts", "prompt", [p for p in points if p[1] == L]),
                                 ("layers", "layer", [p for p in points if p[0] == n])):
            for key in sorted(keys, key=lambda p: p[0] if axis == "prompts" else p[1]):
                x = key[0] if axis == "prompts" else key[1]
                point: Dict[str, Any] = {axis: x}
                for what in ("eap", "forward_backward"):
                    r = measured[key][what]
                    point.update({f"{what}_seconds": r["seconds"], f"{what}_cpu_seconds": r["cpu_seconds"],
                                  f"{what}_seconds_per_{unit}": r["seconds"] / x, f"{what}_cpu_seconds_per_{unit}": r["cpu_seconds"] / x,
                                  f"{what}_peak_memory_bytes": r["peak_memory_bytes"]})
                scaling[axis].append(point)
            pts = scaling[axis]
            xs = [p[axis] for p in pts]
            scaling[f"{axis}_fit"] = {f"{what}{clock}": fit_line(xs, [p[f"{what}{clock}_seconds"] for p in pts])
                                      for what in ("eap", "forward_backward") for clock in ("", "_cpu")}
            print()
            print(f"EAP and forward+backward against the number of prompts ({L} layers)" if axis == "prompts" else
                  f"EAP and forward+backward against depth (width {cfg['n_embd']}, {cfg['n_head']} heads, {n} prompts)")
            print(table([axis, "EAP s", f"ms/{unit}", f"CPU ms/{unit}", "fwd+bwd s", f"ms/{unit}", f"CPU ms/{unit}",
                         "EAP/fwd+bwd", "(CPU)", "EAP peak MiB", "fwd+bwd peak MiB"],
                        [[str(p[axis]),
                          f"{p['eap_seconds']:.3f}", f"{1000 * p[f'eap_seconds_per_{unit}']:.1f}", f"{1000 * p[f'eap_cpu_seconds_per_{unit}']:.1f}",
                          f"{p['forward_backward_seconds']:.3f}", f"{1000 * p[f'forward_backward_seconds_per_{unit}']:.1f}",
                          f"{1000 * p[f'forward_backward_cpu_seconds_per_{unit}']:.1f}",
                          f"{p['eap_seconds'] / p['forward_backward_seconds']:.2f}",
                          f"{p['eap_cpu_seconds'] / p['forward_backward_cpu_seconds']:.2f}",
                          mib(p["eap_peak_memory_bytes"]), mib(p["forward_backward_peak_memory_bytes"])] for p in pts]))
            for what in ("eap", "forward_backward"):
                w, c = scaling[f"{axis}_fit"][what], scaling[f"{axis}_fit"][f"{what}_cpu"]
                print(f"  linear fit, {what}: {w['intercept']:.3f} s + {1000 * w['slope']:.1f} ms/{unit} (R^2 {w['r2']:.3f}); "
                      f"CPU time {c['intercept']:.3f} s + {1000 * c['slope']:.1f} ms/{unit} (R^2 {c['r2']:.3f})")
        again = measured[(n, L)]["forward_backward"]
        scaling["baseline_drift"] = {"forward_backward_seconds_main": fb["seconds"], "forward_backward_seconds_again": again["seconds"],
                                     "forward_backward_cpu_seconds_main": fb["cpu_seconds"], "forward_backward_cpu_seconds_again": again["cpu_seconds"]}
        print(f"\nforward_backward ({n} prompts, {L} layers) in the main table: {fb['seconds']:.3f} s (CPU {fb['cpu_seconds']:.3f} s); "
              f"measured again at the end: {again['seconds']:.3f} s (CPU {again['cpu_seconds']:.3f} s): "
              f"the machine's load moved wall-clock times by {100 * (again['seconds'] / fb['seconds'] - 1):+.0f}% "
              f"and CPU times by {100 * (again['cpu_seconds'] / fb['cpu_seconds'] - 1):+.0f}% during the run")

    # ------------------------------------------------------------------ streaming and the large model
    helpers = {"table": table, "mib": mib}
    stream = bench_scale.streaming(measure, spec, quick=args.quick, fit_line=fit_line, **helpers) if "streaming" in sections else {}
    big = bench_scale.large(measure, spec, quick=args.quick, mib=mib) if "large" in sections else {}
    targets += [part["target"] for part in (stream, big) if part]
    arch = architectures(args.quick) if "architectures" in sections else {}
    for row in arch.get("families", []):
        targets.append({"target": f"{row['family']}: EAP time <= {row['target']}x that model's forward_backward",
                        "value": row["ratio"], "limit": row["target"], "pass": row["met"]})
    if arch.get("transformer_lens", {}).get("target"):
        tl = arch["transformer_lens"]
        targets.append({"target": f"EAP >= {tl['target']:.0f}x faster than TransformerLens 4.3's edge attribution_patch "
                                  f"(GPT-2 small shape, n = {tl['prompts']})", "value": tl["speedup"], "limit": tl["target"],
                        "pass": tl["met"]})

    # ------------------------------------------------------------------ bench.json
    from circuits.atomic import write_atomic

    fb_grad = fb["info"]["grad"]
    report = {
        "machine": {**machine_info(args.device, fb["threads"]), "loadavg_start": load_start, "loadavg_end": loadavg()},
        "settings": {
            "quick": args.quick, "model": {"family": "gpt2", **cfg, "weights": f"random (torch.manual_seed({args.seed}))",
                                           "folder": str(folder)},
            "task": "greater-than", "prompts": n, "peer_style_prompts": peer_n, "seq_len": fb["info"]["seq_len"],
            "seed": args.seed, "rounds": args.rounds, "repeats": args.repeats,
            "timing": "fastest of the rounds x repeats: time.perf_counter (seconds) and time.process_time (cpu_seconds) around the measured work only",
            "ig_steps": IG_STEPS, "path_patching_threshold": 0.02, "faithfulness_circuit": f"top {CIRCUIT_FRACTION:.0%} of edges by |EAP|, pruned",
            "forward_backward_grad": fb_grad, "peak_memory": fb["memory_method"],
            "process_start": runner.start_method, "device": args.device, "threads_per_measurement": fb["threads"],
        },
        "measurements": rows,
        "per_pass": per_pass,
        "targets": targets,
        "checks": checks,
        "scaling": scaling,
        "streaming": stream,
        "large_model": big,
        "architectures": arch,
        "total_seconds": time.perf_counter() - t_start,
    }
    write_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['total_seconds']:.0f} s in all)")
    return 0


def cuda_main(args, spec, runner, t_start: float, load_start) -> int:
    """The GPU plan (``scripts/bench_scale.cuda_plan``): one command, a few minutes, ``bench-cuda.json``."""
    from circuits.atomic import write_atomic

    prompts = bench_scale.CUDA_QUICK_PROMPTS if args.quick else bench_scale.CUDA_PROMPTS
    print(f"GPU plan on {args.device}: GPT-2-small shape at {' and '.join(map(str, prompts))} prompts, then EAP on the "
          f"{'tiny' if args.quick else '1B'} Llama shape in bfloat16", flush=True)

    def measure(s: Dict[str, Any], label: str) -> Dict[str, Any]:
        res = runner.run(s)
        print(f"  {label:<24} {res['seconds']:9.3f} s  peak {mib(res['peak_memory_bytes']):>8} MiB", flush=True)
        return res

    out = bench_scale.run_cuda(measure, spec, quick=args.quick, table=table, mib=mib)
    report = {"machine": {**machine_info(args.device, 0), "loadavg_start": load_start, "loadavg_end": loadavg()},
              "settings": {"quick": args.quick, "device": args.device, "plan": "cuda", "task": "greater-than",
                           "peak_memory": "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else "process RSS high-water mark",
                           "timing": "one run per row after an untimed warm-up, each in its own process"},
              **out, "total_seconds": time.perf_counter() - t_start}
    write_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out} ({report['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
