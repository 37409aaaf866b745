"""The measurements of ``scripts/bench.py``, one per process: load, warm up, time, report.

Each measurement runs in its own process (``measure(spec)``): the model is loaded and the
prompts are built before the clock starts, one small untimed forward and backward warms the
libraries up, then the measured work runs ``repeats`` times and the fastest time is kept:
wall-clock (``time.perf_counter``), and the process's CPU time (``time.process_time``), which
a loaded machine disturbs far less when the measurement runs on one thread.

Peak memory is that process's high-water mark while the measured work runs: on Linux the
process's resident-set high-water mark (``VmHWM``) is reset (``/proc/self/clear_refs``) just
before the work, so loading the model does not count; elsewhere it is ``ru_maxrss`` of the
whole process.  With ``--device cuda`` it is ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import resource
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import torch

from circuits.engine.engine import GraphEngine, Patch
from circuits.engine.memory import proc_field_kb
from circuits.models import load_model
from circuits.registry import get_method
from circuits.methods.base import MethodOptions
from circuits.tasks.greater_than import GreaterThan

# imported here so that the process server has them loaded before it forks (booting a model imports them lazily)
for _name in ("transformer_lens.model_bridge", "transformer_lens.utilities.architectures",
              "transformer_lens.utilities.bridge_components", "transformers.generation.utils",
              "transformers.models.gpt2.modeling_gpt2", "transformers.masking_utils", "psutil"):
    try:
        __import__(_name)
    except ImportError:
        pass
gc.freeze()  # the libraries' objects: never collected, so each gc.collect() below is cheap

# --------------------------------------------------------------------------- memory

def _method_options(spec: dict):
    """A spec's ``options``: the shared settings as fields, every other key as the method's own (``params``)."""

    opts = dict(spec.get("options", {}))
    shared = {k: opts.pop(k) for k in ("ablation", "batch_size", "neurons", "top_neurons") if k in opts}
    return MethodOptions(**shared, params=opts)

def _status_kb(field: str) -> Optional[int]:
    return proc_field_kb(field, "/proc/self/status")


def _reset_rss_peak() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory of the code between ``start()`` and ``peak()``."""

    def __init__(self, device: str):
        self.device = device
        self.method = ""
        self.before = 0

    def start(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated (reset before the measured work; includes the model's weights)"
            return
        if _reset_rss_peak() and _status_kb("VmHWM") is not None:
            self.method = "process RSS high-water mark (VmHWM, reset before the measured work; includes the model and libraries)"
        else:
            self.method = "ru_maxrss of the measurement's process (includes loading the model)"
        self.before = self._rss()

    def _rss(self) -> int:
        kb = _status_kb("VmRSS")
        if kb is not None:
            return kb * 1024
        return 0

    def peak(self) -> int:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        kb = _status_kb("VmHWM") if self.method.startswith("process RSS") else None
        if kb is not None:
            return kb * 1024
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)


# --------------------------------------------------------------------------- helpers
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _answer_logits(logits: torch.Tensor, data) -> torch.Tensor:
    pos = data.answer_pos.to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), pos]


def _on(data, device: str):
    """The dataset with its tensors on ``device`` (the methods move tokens themselves; the bridge does not)."""
    return dataclasses.replace(data, clean=data.clean.to(device), corrupted=data.corrupted.to(device),
                               answer_pos=data.answer_pos.to(device))


def _trainable_engine(engine: GraphEngine) -> GraphEngine:
    """The same engine with every weight requiring grad (training-style autograd, like the bridge's baseline)."""
    changes = {}
    for f in dataclasses.fields(engine.w):
        value = getattr(engine.w, f.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            changes[f.name] = value.detach().requires_grad_(True)
    return GraphEngine(dataclasses.replace(engine.w, **changes))


# --------------------------------------------------------------------------- peer-style EAP
class Flags:
    """TransformerLens's per-head flags on the bridge: split q/k/v inputs, per-head results, MLP input hook."""

    def __init__(self, bridge):
        self.bridge = bridge

    def __enter__(self):
        self.bridge.set_use_attn_result(True)
        self.bridge.set_use_split_qkv_input(True)
        self.bridge.set_use_hook_mlp_in(True)
        return self.bridge

    def __exit__(self, *exc):
        self.bridge.set_use_attn_result(False)
        self.bridge.set_use_split_qkv_input(False)
        self.bridge.set_use_hook_mlp_in(False)
        self.bridge.reset_hooks()


MLP_IN_HOOK = "blocks.{layer}.ln2.hook_in"


def sender_hooks(n_layers: int, store: Dict[str, torch.Tensor]):
    """Forward hooks that record every sender's output (embeddings, each layer's head results, MLP outputs) in ``store``."""
    def keep(name):
        def hook(t, hook):
            store[name] = t.detach()
        return hook
    names = ["hook_embed", "hook_pos_embed"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.hook_mlp_out"]
    return [(name, keep(name)) for name in names]


def peer_style_eap(bridge, data, metric, n_layers: int, n_heads: int, graph) -> torch.Tensor:
    """EAP as EAP-IG's and auto-circuit's code computes it, on the bridge's TransformerLens hooks.

    Forward hooks store every sender's output (``hook_embed + hook_pos_embed``, each head's
    ``attn.hook_result``, ``hook_mlp_out``) in a corrupted and a clean run; in the clean run,
    every receiver input (``hook_{q,k,v}_input`` per head, the MLP's input, ``ln_final``'s
    input) gets a zero probe tensor added, whose gradient after ``backward`` is the gradient
    at that input.  Scores: ``sum_{b,p} (corrupted - clean)[s] . grad[r]`` over each receiver's
    upstream senders.  Parameters do not require grad (only activation gradients are computed).
    """
    clean_tokens, corrupted_tokens = data.clean, data.corrupted

    def sender_stack(store) -> torch.Tensor:  # [S, b, p, d] in the graph's sender order
        outs = [store["hook_embed"] + store["hook_pos_embed"]]
        for layer in range(n_layers):
            outs += list(store[f"blocks.{layer}.attn.hook_result"].permute(2, 0, 1, 3))
            outs.append(store[f"blocks.{layer}.hook_mlp_out"])
        return torch.stack(outs)

    corrupted: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        bridge.run_with_hooks(corrupted_tokens, fwd_hooks=sender_hooks(n_layers, corrupted))
    clean: Dict[str, torch.Tensor] = {}
    probes: Dict[str, torch.Tensor] = {}

    def probe(name):
        def add(t, hook):
            probes[name] = torch.zeros_like(t, requires_grad=True)
            return t + probes[name]
        return add

    receivers = []
    for layer in range(n_layers):
        receivers += [f"blocks.{layer}.hook_{x}_input" for x in "qkv"] + [MLP_IN_HOOK.format(layer=layer)]
    receivers.append("ln_final.hook_in")
    with torch.enable_grad():
        logits = bridge.run_with_hooks(clean_tokens, fwd_hooks=sender_hooks(n_layers, clean) + [(r, probe(r)) for r in receivers])
        metric(_answer_logits(logits, data), data).mean().backward()
    del logits
    delta = sender_stack(corrupted)
    delta -= sender_stack(clean)
    corrupted.clear(), clean.clear()
    flat = delta.reshape(delta.shape[0], -1)
    scores = torch.zeros(graph.n_senders, graph.n_receivers, dtype=delta.dtype, device=delta.device)
    for layer in range(n_layers):
        n_in = graph.senders_before_heads(layer)
        for x in "qkv":
            g = probes.pop(f"blocks.{layer}.hook_{x}_input").grad  # [b, p, H, d]
            cols = [graph.head_receiver(layer, h, x) for h in range(n_heads)]
            scores[:n_in, cols[0]:cols[-1] + 1] = torch.einsum("sbpd,bphd->sh", delta[:n_in], g)
        g = probes.pop(MLP_IN_HOOK.format(layer=layer)).grad  # [b, p, d]
        n_in = graph.senders_before_mlp(layer)
        scores[:n_in, graph.mlp_receiver(layer)] = flat[:n_in] @ g.reshape(-1)
    g = probes.pop("ln_final.hook_in").grad
    scores[:, graph.logits_receiver] = flat @ g.reshape(-1)
    return scores


# --------------------------------------------------------------------------- path patching under a time budget
class _OverBudget(Exception):
    pass


class BudgetedPathPatching:
    """Path patching's search, stopped after ``budget`` seconds, with its full cost projected.

    On a model whose edges all matter a little (random weights), the search with the default
    threshold explores nearly every node, i.e. about one forward pass per edge: days on a CPU
    for GPT-2 small with 100 prompts.  Within the budget this runs the library's search as is,
    counting its forward passes (``engine.run`` calls) and recording the nodes it queues.  If
    the budget runs out, the projection is: the passes the search must still make for the
    nodes already queued (a lower bound: more may be queued later), each at the measured cost
    of a patched pass that starts at that receiver's layer.
    """

    def __init__(self, engine, data, metric, options, budget: float):
        self.engine, self.data, self.metric, self.options, self.budget = engine, data, metric, options, budget

    def __call__(self) -> Dict[str, Any]:
        import circuits.methods.path_patching as ppm

        engine, g = self.engine, self.engine.graph
        queued: List[int] = [g.n_senders]  # the logits
        popped = [0]
        real_heapq, real_run = ppm.heapq, engine.run

        class Spy:  # the search's priority queue, watched
            @staticmethod
            def heappush(heap, item):  # item: (-priority, -node); a node may be pushed again with a larger priority
                if -item[1] not in queued:
                    queued.append(-item[1])
                real_heapq.heappush(heap, item)

            @staticmethod
            def heappop(heap):
                popped[0] += 1
                return real_heapq.heappop(heap)

        passes = [0]
        t0 = time.perf_counter()

        def run(*args, **kwargs):
            if self.budget and time.perf_counter() - t0 > self.budget:
                raise _OverBudget
            passes[0] += 1
            return real_run(*args, **kwargs)

        ppm.heapq, engine.run = Spy, run
        try:
            scores = ppm.PathPatching().score(engine, self.data, self.metric, self.options)
            return {"complete": True, "scores": scores, "passes": passes[0]}
        except _OverBudget:
            elapsed = time.perf_counter() - t0
        finally:
            ppm.heapq = real_heapq
            del engine.run
        # passes still owed for every queued node (each receiver input: one pass per upstream sender)
        L, H = engine.w.n_layers, engine.w.n_heads
        by_layer = [0] * (L + 1)
        by_layer[0] += 3  # clean, corrupted and fully patched runs
        for node in queued:
            for r in ppm.PathPatching._inputs(g, node):
                layer = L if r == g.logits_receiver else r // (3 * H + 1)
                by_layer[layer] += g.n_valid_senders(r)
        cost, cpu_cost = self._pass_costs(sorted({0, L // 2, L}))
        return {"complete": False, "measured_seconds": elapsed, "passes": passes[0], "receivers_explored": popped[0],
                "nodes_queued": len(queued) - 1, "projected_passes_min": sum(by_layer),
                "projected_seconds": sum(n * cost[layer] for layer, n in enumerate(by_layer)),
                "projected_cpu_seconds": sum(n * cpu_cost[layer] for layer, n in enumerate(by_layer)),
                "pass_seconds_by_start_layer": cost}

    def _pass_costs(self, layers: List[int]):
        """Wall and CPU seconds of one path-patching pass (one patched edge) starting at each layer,
        measured at ``layers`` and interpolated linearly in between."""
        from circuits.engine.ablation import reference

        engine, g, data = self.engine, self.engine.graph, self.data
        L = engine.w.n_layers
        tokens = data.clean.to(engine.device)
        with torch.no_grad():
            clean = engine.run(tokens, data.answer_pos, collect=True, keep_resid=True)
            ref = reference(engine, data, self.options.ablation).outputs
            measured, cpu = {}, {}
            for layer in layers:
                r = g.logits_receiver if layer == L else g.head_receiver(layer, 0, "q")
                keep = torch.ones(g.n_senders, g.n_receivers, device=engine.device)
                keep[0, r] = 0.0
                _sync(str(engine.device))
                t0, c0 = time.perf_counter(), time.process_time()
                run = engine.run(tokens, data.answer_pos, patch=Patch(keep, ref), start_layer=layer,
                                 start_resid=clean.resid_pre[layer], start_outputs=clean.outputs)
                float(self.metric(run.logits, data).sum())
                _sync(str(engine.device))
                measured[layer], cpu[layer] = time.perf_counter() - t0, time.process_time() - c0

        def interpolate(at: Dict[int, float]) -> List[float]:
            xs, out = sorted(at), []
            for layer in range(L + 1):
                hi = next(x for x in xs if x >= layer)
                lo = max(x for x in xs if x <= layer)
                out.append(at[lo] if hi == lo else at[lo] + (at[hi] - at[lo]) * (layer - lo) / (hi - lo))
            return out
        return interpolate(measured), interpolate(cpu)


# --------------------------------------------------------------------------- measurements
def _faithfulness_fn():
    """The library's one-circuit faithfulness, or a local equivalent if its API is not there."""
    try:
        from circuits.circuit.faithfulness import faithfulness

        return faithfulness, "circuits.circuit.faithfulness.faithfulness"
    except ImportError:
        pass

    def local(engine, data, metric, keep_mask):
        with torch.no_grad():
            ref = engine.run(data.corrupted.to(engine.device), data.answer_pos, collect=True).outputs
            keep = torch.as_tensor(keep_mask).to(device=engine.device, dtype=ref.dtype)

            def m(k):
                run = engine.run(data.clean.to(engine.device), data.answer_pos, patch=Patch(k, ref))
                return float(metric(run.logits, data).double().mean())
            full, empty, circ = m(torch.ones_like(keep)), m(torch.zeros_like(keep)), m(keep)
        return dataclasses.make_dataclass("F", ["m_full", "m_empty", "m_circuit", "f"])(
            full, empty, circ, (circ - empty) / (full - empty) if full != empty else math.nan)

    return local, "local engine.run(patch=Patch(keep, corrupted outputs))"


def measure_llama(spec: Dict[str, Any]) -> Dict[str, Any]:
    """EAP on random Llama-shaped weights (``spec["llama"]``: layers, d_model, heads, kv_heads, d_mlp) in
    ``spec["dtype"]``, with GPT-2's tokenizer (vocabulary 50257) and greater-than prompts.  The weights
    are built before the clock and the memory meter start; the peak includes them."""
    from circuits.engine.memory import parse_dtype
    from circuits.models.synthetic import llama_parameters, random_llama_weights
    from circuits.models.tokenizers import gpt2_tokenizer

    device, shape = spec["device"], dict(spec["llama"])
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    tokenizer = gpt2_tokenizer()
    vocab = len(tokenizer)
    dtype = parse_dtype(spec.get("dtype", "float32"))
    t0 = time.perf_counter()
    engine = GraphEngine(random_llama_weights(**shape, vocab=vocab, dtype=dtype, seed=int(spec.get("seed", 0)), device=device))
    build_s = time.perf_counter() - t0
    task = GreaterThan()
    data = task.build(tokenizer, n=int(spec["n"]), seed=int(spec.get("seed", 0)))
    options = _method_options(spec)
    info: Dict[str, Any] = {"prompts": len(data), "seq_len": int(data.clean.shape[1]), "dtype": spec.get("dtype", "float32"),
                            "parameters": llama_parameters(**shape, vocab=vocab), "shape": shape, "vocab": vocab,
                            "batch_size": options.batch_size, "build_seconds": build_s}
    warm = data.subset(slice(0, min(2, len(data))))
    get_method("eap").score(engine, warm, task.metric)  # warm-up, untimed
    result: Dict[str, Any] = {}

    def work():
        result["scores"] = get_method(spec.get("method", "eap")).score(engine, data, task.metric, options)

    def post():
        s = result["scores"]
        info.update({k: v for k, v in s.info.items() if isinstance(v, (int, float, str))})
        info["finite_scores"] = bool(torch.isfinite(s.edge_scores).all())
        info["score_dtype"] = str(s.edge_scores.dtype).replace("torch.", "")
    return _timed(work, post, info, 1, device)


def measure_load(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Loading the model and building its engine, without (``load``) or with (``load_checked``) the engine's
    architecture and logit checks (``GraphEngine.from_model(check=...)``).  One load per process, as a
    command does; the libraries are imported before the clock starts.  ``spec["fresh_cache"]``: an empty
    ``$CIRCUITS_CACHE``, so the logit check is not remembered from an earlier load and runs."""
    import os
    import tempfile

    device, check = spec["device"], spec["kind"] == "load_checked"
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    if spec.get("fresh_cache"):
        os.environ["CIRCUITS_CACHE"] = tempfile.mkdtemp(prefix="circuits-bench-cache-")
    info: Dict[str, Any] = {"check": check, "fresh_cache": bool(spec.get("fresh_cache")), "prompts": 0, "seq_len": 0}

    def work():
        GraphEngine.from_model(load_model(spec["model_dir"], device=device), check=check)
    return _timed(work, None, info, 1, device)


def _timed(work: Callable[[], Any], post: Optional[Callable[[], None]], info: Dict[str, Any], repeats: int,
           device: str) -> Dict[str, Any]:
    """Run ``work`` ``repeats`` times under the memory meter; the row with the fastest time and the peak."""
    meter = MemoryMeter(device)
    times: List[float] = []
    cpu_times: List[float] = []
    meter.start()
    for _ in range(repeats):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        work()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    peak = meter.peak()
    if post is not None:
        post()
    seconds, cpu_seconds = min(times), min(cpu_times)
    if info.get("complete") is False:  # stopped at its budget: the row reports the projected time
        seconds, cpu_seconds = info["projected_seconds"], info["projected_cpu_seconds"]
    return {
        "seconds": seconds, "seconds_all": times, "cpu_seconds": cpu_seconds, "cpu_seconds_all": cpu_times, "peak_memory_bytes": int(peak),
        "memory_before_bytes": int(meter.before), "memory_method": meter.method, "info": info,
        "threads": torch.get_num_threads(),
    }


def _hooked_bridge(bridge, data, device):
    """Set up a TransformerLens row (peer-style EAP, naive ACDC): frozen weights and the per-head flags
    on (left on for the warm-up and the measured runs; the row's ``post`` switches them off).
    Returns the bridge's config, its graph and the data on ``device``."""
    from circuits.engine.graph import ComputationalGraph

    for p in bridge.parameters():
        p.requires_grad_(False)
    cfg = bridge.cfg
    Flags(bridge).__enter__()
    return cfg, ComputationalGraph(cfg.n_layers, cfg.n_heads), _on(data, device)


def _fastest(fn: Callable[[], Any], repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (no gradients), in seconds."""
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times)


def measure(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Run one measurement described by ``spec``; returns its row (seconds, peak memory, info)."""
    kind, device = spec["kind"], spec["device"]
    if kind == "llama_method":
        return measure_llama(spec)
    if kind in ("load", "load_checked"):
        return measure_load(spec)
    repeats = max(1, int(spec.get("repeats", 1)))
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    loaded = load_model(spec["model_dir"], device=device)
    task = GreaterThan()
    data = task.build(loaded.tokenizer, n=int(spec["n"]), seed=int(spec.get("seed", 0)))
    metric = task.metric
    warm = data.subset(slice(0, min(2, len(data))))
    info: Dict[str, Any] = {"prompts": len(data), "seq_len": int(data.clean.shape[1])}
    post: Optional[Callable[[], None]] = None

    bridge = loaded.bridge
    uses_bridge = kind.startswith("bridge") or kind in ("peer", "acdc_naive")
    engine = None
    if not uses_bridge:
        engine = GraphEngine.from_model(loaded)
        del loaded, bridge  # only the engine's weights stay (W_E / W_U share their storage)
        gc.collect()

    if kind == "bridge_forward":
        d = _on(data, device)

        def work():
            with torch.no_grad():
                return metric(_answer_logits(bridge(d.clean), d), d).mean()
    elif kind in ("bridge_fb", "bridge_fb_inputs"):
        d = _on(data, device)
        params = kind == "bridge_fb"
        for p in bridge.parameters():
            p.requires_grad_(params)
        info["grad"] = "parameters (training-style: every weight requires grad)" if params else \
            "input embeddings only (weights frozen; a zero probe added at hook_embed)"

        def work():
            for p in bridge.parameters():
                p.grad = None
            if params:
                logits = bridge(d.clean)
            else:
                probe = {}

                def add(t, hook):
                    probe["x"] = torch.zeros_like(t, requires_grad=True)
                    return t + probe["x"]
                logits = bridge.run_with_hooks(d.clean, fwd_hooks=[("hook_embed", add)])
            metric(_answer_logits(logits, d), d).mean().backward()
    elif kind == "engine_forward":
        def work():
            with torch.no_grad():
                return metric(engine.run(data.clean.to(engine.device), data.answer_pos).logits, data).mean()
    elif kind == "engine_fb":
        engine = _trainable_engine(engine)
        info["grad"] = "parameters (training-style: every weight requires grad)"

        def work():
            for f in dataclasses.fields(engine.w):
                t = getattr(engine.w, f.name)
                if isinstance(t, torch.Tensor):
                    t.grad = None
            metric(engine.run(data.clean.to(engine.device), data.answer_pos).logits, data).mean().backward()
    elif kind == "masked_fb":
        from circuits.engine.engine import Patch

        g = engine.graph
        d = _on(data, device)
        with torch.no_grad():
            ref = engine.run(d.corrupted.to(engine.device), d.answer_pos,
                             collect=True).outputs
        logit = torch.full((g.n_senders, g.n_receivers), 2.0, device=engine.device, requires_grad=True)
        valid = g.valid_mask(engine.device)
        info["grad"] = "a real-valued keep [S, R] = sigmoid(logits) (every edge), references precomputed"

        def work():
            logit.grad = None
            keep = torch.sigmoid(logit) * valid
            logits = engine.run(d.clean.to(engine.device), d.answer_pos, patch=Patch(keep=keep, reference=ref)).logits
            metric(logits, d).mean().backward()
    elif kind == "mask_step":
        from circuits.methods.base import MethodOptions
        from circuits.methods.edge_pruning import HardConcrete
        from circuits.methods.masks import MaskTrainer, Settings

        settings = Settings(steps=1000, lr=0.1, loss="kl", init="none", seed=0, granularity="edge")
        trainer = MaskTrainer(engine, data, metric, MethodOptions(), HardConcrete(0.95, 0.1, 0), settings)
        trainer.step()  # the batch's reference, clean log-probabilities and full/empty metrics: made once, kept
        info["grad"] = "one edge-pruning step: hard-concrete sample, masked forward, KL + Lagrangian, backward, Adam"

        def work():
            trainer.step()
    elif kind == "method" and spec["method"] == "path-patching" and spec.get("budget_s"):
        search = BudgetedPathPatching(engine, data, metric, _method_options(spec), float(spec["budget_s"]))
        result = {}
        repeats = 1

        def work():
            result.update(search())

        def post():
            if result["complete"]:
                info.update({k: v for k, v in result["scores"].info.items() if isinstance(v, (int, float, str))})
                info["complete"] = True
                return
            info.update({k: v for k, v in result.items() if k != "scores"})
            info["budget_s"] = float(spec["budget_s"])
    elif kind == "method":
        method = get_method(spec["method"])
        options = _method_options(spec)
        result: Dict[str, Any] = {}

        def work():
            if spec.get("positions"):  # scores per span ([S, R, K]), as discover --positions computes them
                from circuits.methods.eap import integrated_scores

                result["scores"] = integrated_scores(engine, data, metric, options, steps=int(options.params.get("ig_steps", 1)),
                                                     progress=lambda *a: None, method=spec["method"], aggregate=spec["positions"])
            else:
                result["scores"] = method.score(engine, data, metric, options)

        def post():
            s = result["scores"]
            info.update({k: v for k, v in s.info.items() if isinstance(v, (int, float, str))})
    elif kind == "acdc":
        from bench_acdc import layer_costs, sweep_tests

        method = get_method("acdc")
        options = _method_options(spec)
        result = {}
        repeats = 1

        def work():
            result["scores"] = method.score(engine, data, metric, options)

        def post():
            s = result["scores"]
            info.update({k: v for k, v in s.info.items() if isinstance(v, (int, float, str)) and k != "complete"})
            info["search_complete"] = s.info["complete"]  # False: stopped at the test budget, as intended
            info["seconds_per_test_by_layer"] = {str(k): v for k, v in layer_costs(engine, data, metric, options, list(range(engine.graph.n_layers + 1))).items()}
            info["edge_tests_by_layer_full_sweep"] = {str(k): v for k, v in sweep_tests(engine.graph).items()}
            info["engine_forward_seconds"] = _fastest(lambda: engine.run(data.clean.to(engine.device), data.answer_pos))
            info["effects"] = {f"{a},{b}": float(s.edge_scores[a, b]) for a, b in (s.edge_scores != 0).nonzero().tolist()}
    elif kind == "acdc_naive":
        from bench_acdc import naive_acdc

        cfg, graph, d = _hooked_bridge(bridge, data, device)
        opts = spec.get("options", {})
        result = {}
        repeats = 1

        def work():
            result.update(naive_acdc(bridge, d, metric, graph, tau=float(opts.get("tau", 0.01)), budget=int(opts["max_tests"])))

        def post():
            Flags(bridge).__exit__()
            info["edge_tests"] = result["edge_tests"]
            info["effects"] = {f"{a},{b}": v for (a, b), v in result["effects"].items()}
            info["bridge_forward_seconds"] = _fastest(lambda: bridge(d.clean))
    elif kind == "faithfulness":
        from circuits.circuit.select import prune, top_k_mask

        fn, how = _faithfulness_fn()
        scores = get_method("eap").score(engine, data, metric)
        k = max(1, math.ceil(spec.get("fraction", 0.01) * engine.graph.n_edges))
        mask = prune(top_k_mask(scores, k), engine.graph)
        del scores
        info.update({"circuit": f"top {k} edges by |EAP score| ({spec.get('fraction', 0.01):.0%}), pruned",
                     "edges": int(mask.sum()), "api": how})
        result = {}

        def work():
            result["f"] = fn(engine, data, metric, mask)

        def post():
            info["faithfulness"] = float(result["f"].f)
    elif kind == "peer":
        cfg, graph, d = _hooked_bridge(bridge, data, device)
        result = {}

        def work():
            result["scores"] = peer_style_eap(bridge, d, metric, cfg.n_layers, cfg.n_heads, graph)

        def post():
            Flags(bridge).__exit__()
            ours = get_method("eap").score(GraphEngine.from_model(loaded), data, metric).edge_scores
            theirs = result["scores"].detach().cpu() * graph.valid_mask()
            info["max_abs_diff_vs_eap"] = float((ours - theirs).abs().max())
            info["max_abs_score"] = float(ours.abs().max())
    else:
        raise ValueError(f"unknown measurement kind {kind!r}")

    # warm-up: one small forward and backward of whatever runs the measured work (untimed)
    with torch.enable_grad():
        if uses_bridge:
            for p in bridge.parameters():
                p.requires_grad_(kind == "bridge_fb")
            wd = _on(warm, device)
            probe = {}

            def add(t, hook):
                probe["x"] = torch.zeros_like(t, requires_grad=True)
                return t + probe["x"]
            metric(_answer_logits(bridge.run_with_hooks(wd.clean, fwd_hooks=[("hook_embed", add)]), wd), wd).mean().backward()
            if kind == "bridge_fb":
                for p in bridge.parameters():
                    p.grad = None
        else:
            x = engine.embed(warm.clean.to(engine.device)).detach().requires_grad_(True)
            metric(engine.run(warm.clean.to(engine.device), warm.answer_pos, resid0=x, trace=True).logits, warm).mean().backward()
            del x
    _sync(device)

    if "batch_size" in spec.get("options", {}):
        info["batch_size"] = spec["options"]["batch_size"]
    return _timed(work, post, info, repeats, device)
