"""``circuits discover``: score every edge, keep a faithful circuit, write the run folder.

The steps, each a function: check the request before any model loads (:func:`plan`), load the
model and the prompts (:func:`prepare`), score and select (``circuits.circuit.discover``), write the
folder (``circuits.circuit.run_folder``), and :func:`summary` for what the CLI prints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from circuits.errors import CircuitsError
from circuits.jobs.base import Job, Report
from circuits.jobs.common import (ABLATION, BATCH_SIZE, BOOTSTRAP_HELP, DATA, DEFAULT_HOLDOUT, DEVICE, DTYPE, HOLDOUT, MAX_MEMORY, METHOD,
                                  METRIC, MODEL, SEED, TASK, TASK_FILE, N, auto_batch, batch_plan, build_prompts,
                                  check_keep_neurons, load_engine, neuron_layer_names, parse_mlp_layers, resolve_task)
from circuits.methods.base import VERIFY_AUTO_EDGES, VERIFY_TOLERANCE
from circuits.options import Option


def _bootstrap(k: int) -> int:
    from circuits.circuit.stability import check_bootstrap

    return check_bootstrap(k)


OPTIONS = (
    TASK, MODEL, METHOD,
    Option("out", Path, None, "Run folder to write (must be empty unless --force).", short="-o", required=True, served=False),
    N, SEED, DATA, HOLDOUT,
    Option("top_k", int, None, "Keep the K first-ranked edges (then prune); for a node method (activation-patching), "
           "the K nodes.", minimum=0),
    Option("threshold", float, None, "Keep every edge (node, for a node method) with |score| >= T (--ranking signed: "
           "-score >= T), then prune.", minimum=0.0),
    Option("target", float, None, "Keep the smallest top-k circuit with faithfulness >= F [default: 0.9 when no mode "
           "is given; acdc keeps its own circuit].", long="--target-faithfulness", minimum=0.0, maximum=1.0),
    Option("ranking", str, "abs", "Order of the edges (nodes) the selection and the curve take: abs (largest |score| "
           "first) or signed (most helpful first, as MIB ranks for CPR: finds the small circuits that push the "
           "behaviour, without the parts that work against it).", choices=("abs", "signed")),
    Option("verify", bool, None, f"Check each edge of the chosen circuit by patching and drop those that change nothing "
           f"(default: on for --target-faithfulness circuits of at most {VERIFY_AUTO_EDGES} edges)."),
    Option("verify_tolerance", float, VERIFY_TOLERANCE, "The most verification may move the circuit's metric, as a "
           "fraction of the full model's effect.", minimum=0.0),
    ABLATION, METRIC,
    Option("neurons", str, None, "Score the neurons of these MLPs, e.g. m8,m9."),
    Option("keep_neurons", int, None, "Keep each --neurons MLP through its K top-scored neurons only (the others are "
           "patched)."),
    Option("bootstrap", int, 0, BOOTSTRAP_HELP, parse=_bootstrap),
    Option("positions", bool, False, "Score and keep edges per span of the prompt (the task's schema, or each position "
           "when it has none): a circuit of (edge, span) pairs (eap, eap-ig)."),
    Option("span_aggregate", str, "sum", "--positions: how a span's positions combine: sum, mean or max.",
           choices=("sum", "mean", "max")),
    BATCH_SIZE, MAX_MEMORY, DTYPE, TASK_FILE, DEVICE,
    Option("force", bool, False, "Write into a non-empty --out folder.", served=False),
)


@dataclass(frozen=True)
class Plan:
    """A checked request: the objects it names, before any model is loaded."""

    task: Any
    method: Any
    spec: Any  # circuits.circuit.discover.SelectionSpec
    neuron_layers: tuple
    batch: Optional[int]
    budget: Optional[int]
    params: Mapping[str, Any]


def selection_spec(values: Mapping[str, Any], default: Optional[str] = None):
    """The selection mode given, else the method's own default (``acdc``), else F = 0.9."""
    from circuits.circuit.discover import SelectionSpec

    given = [(flag, values[k]) for flag, k in (("--top-k", "top_k"), ("--threshold", "threshold"),
                                               ("--target-faithfulness", "target")) if values.get(k) is not None]
    if len(given) > 1:
        raise CircuitsError(f"choose one selection mode: {' and '.join(f for f, _ in given)} were both given")
    if values.get("top_k") is not None:
        spec = SelectionSpec("top-k", values["top_k"])
    elif values.get("threshold") is not None:
        spec = SelectionSpec("threshold", values["threshold"])
    elif values.get("target") is None and default == "acdc":
        spec = SelectionSpec("acdc", 0.0)
    else:
        spec = SelectionSpec("target-faithfulness", 0.9 if values.get("target") is None else values["target"])
    return replace(spec, ranking=values["ranking"], verify=values["verify"], verify_tolerance=values["verify_tolerance"])


def plan(values: Mapping[str, Any]) -> Plan:
    """Everything that can be refused before the model loads."""
    from circuits.circuit.discover import check_selection, holdout_count
    from circuits.circuit.run_folder import check_out_dir
    from circuits.methods.base import option_values
    from circuits.registry import get_method

    if values["holdout"] is not None:
        holdout_count(values["holdout"], values["n"])
    layers = parse_mlp_layers(values["neurons"]) or ()
    method = get_method(values["method"])
    spec = selection_spec(values, getattr(method, "default_selection", None))
    check_selection(spec, method)
    if values["keep_neurons"] is not None:
        check_keep_neurons(values["keep_neurons"], layers)
        spec = replace(spec, keep_neurons=values["keep_neurons"])
    if values["positions"]:
        from circuits.circuit.positions import check_positional

        check_positional(method, spec, values["span_aggregate"], layers)
    batch, budget = batch_plan(values["batch_size"], values["max_memory"])
    params = option_values(method, values.get("method_params") or {})
    check_out_dir(values["out"], values["force"])
    return Plan(resolve_task(values["task"], values["task_file"]), method, spec, layers, batch, budget, params)


def prepare(values: Mapping[str, Any], p: Plan, load, timings: Dict[str, float], notes: List[str]):
    """The engine and the prompts, split into scored and held-out ones."""
    from circuits.circuit.discover import split_holdout

    t = time.perf_counter()
    tokenizer, engine = load_engine(load, values["model"], values["device"], values["dtype"])
    timings["load"] = time.perf_counter() - t
    for layer in p.neuron_layers:
        if layer >= engine.graph.n_layers:
            raise CircuitsError(f"--neurons m{layer}: the model has MLPs m0..m{engine.graph.n_layers - 1}")
    t = time.perf_counter()
    dataset = build_prompts(p.task, tokenizer, n=values["n"], seed=values["seed"], data=values["data"])
    holdout = values["holdout"]
    if holdout is None:  # the default holds out 20% when that is at least one prompt
        holdout = DEFAULT_HOLDOUT if DEFAULT_HOLDOUT * len(dataset) >= 1 else 0.0
        if holdout == 0.0:
            notes.append(f"note: {len(dataset)} prompts are too few to hold out {DEFAULT_HOLDOUT:g}; nothing is held out")
    scored, heldout = split_holdout(dataset, holdout, seed=values["seed"])
    timings["dataset"] = time.perf_counter() - t
    if values["keep_neurons"] is not None:
        check_keep_neurons(values["keep_neurons"], p.neuron_layers, engine.w.d_mlp)
    return engine, dataset, scored, heldout, holdout


def run(values: Mapping[str, Any], *, progress, load, command: Optional[List[str]] = None) -> Dict[str, Any]:
    from circuits.circuit.discover import discover
    from circuits.circuit.run_folder import write_run
    from circuits.engine.memory import PeakMeter
    from circuits.methods.base import MethodOptions
    from circuits.methods.metrics import build_metric

    p = plan(values)
    timings: Dict[str, float] = {}
    notes: List[str] = []
    engine, dataset, scored, heldout, holdout = prepare(values, p, load, timings, notes)
    meter = PeakMeter.try_start(values["device"])  # the manifest's peak memory growth over the model and prompts
    batch, auto, extra = p.batch, None, {}
    if batch is None:
        t = time.perf_counter()
        auto = auto_batch(engine, dataset, p.task, p.budget, values["ablation"], notes)
        batch, timings["batch_probe"] = auto.batch_size, time.perf_counter() - t
        extra = {"cache_bytes": auto.cache_bytes}
    options = MethodOptions(ablation=values["ablation"], neurons=neuron_layer_names(p.neuron_layers), batch_size=batch,
                            params=p.params)
    metric_fn = build_metric(values["metric"], p.task, engine, dataset, batch_size=batch)
    run_info = {"command": list(command or []), "task": getattr(p.task, "name", values["task"]), "model": values["model"],
                "method": values["method"], "metric": values["metric"], "n": len(dataset), "n_scored": len(scored),
                "holdout": holdout, "data": None if values["data"] is None else str(values["data"]), "seed": values["seed"],
                "device": values["device"], "dtype": values["dtype"], "batch_size": batch,
                "batch_size_auto": None if auto is None else auto.manifest()}
    d_model = getattr(getattr(engine, "w", None), "d_model", None)
    if isinstance(d_model, int):
        run_info["d_model"] = d_model  # EAP-IG's graph files need it (cfg.d_model)
    if values["positions"]:
        return _positional(values, p, engine, scored, heldout, metric_fn, options, run_info, meter, timings, notes, extra,
                           progress)
    result = discover(engine, scored, metric_fn, p.method, options, p.spec, heldout=heldout, progress=progress,
                      bootstrap=values["bootstrap"], seed=values["seed"], **extra)
    if meter is not None:
        run_info["memory"] = meter.report()
    write_run(values["out"], result, run_info, timings=timings, force=values["force"])
    return summary(result, engine, run_info, values["out"], notes)


def _positional(values, p: Plan, engine, scored, heldout, metric_fn, options, run_info, meter, timings, notes, extra,
                progress) -> Dict[str, Any]:
    """``discover --positions``: a circuit of (edge, span) pairs (:mod:`circuits.circuit.positions`), written and summarized."""
    from circuits.circuit.positions import discover_positions
    from circuits.circuit.positions_folder import write_positional_run

    result = discover_positions(engine, scored, metric_fn, p.method, options, p.spec, aggregate=values["span_aggregate"],
                                heldout=heldout, progress=progress, **extra)
    if meter is not None:
        run_info["memory"] = meter.report()
    written = write_positional_run(values["out"], result, run_info, timings=timings, force=values["force"])
    sel = result.selection
    return {"positional": True, "task": run_info["task"], "model": run_info["model"], "method": run_info["method"],
            "out": str(values["out"]), "spans": list(result.spans), "pairs_kept": sel.pairs_kept,
            "pairs_total": result.pairs_total, "edges_kept": written.manifest["edges_kept"], "mode": sel.mode,
            "value": sel.value, "k": sel.k, "faithfulness": result.faithfulness.f, "reached": sel.reached,
            "node_spans": None if sel.node_spans is None else [f"{n}@{s}" for n, s, _ in sel.node_spans],
            "heldout": None if result.heldout is None else {"n": result.n_heldout, "faithfulness": result.heldout.f},
            "method_info": {k: v for k, v in result.scores.info.items() if k in ("complete", "edge_tests")},
            "notes": list(notes)}


def present_positional(r: Mapping[str, Any]) -> Report:
    how = (f"acdc, tau {r['value']:g}: {r['k']} kept before pruning" if r["mode"] == "acdc"
           else f"{r['mode']} {r['value']:g}, k = {r['k']}")
    lines = [f"{r['task']} on {r['model']} with {r['method']} by span ({', '.join(r['spans'])}): {r['pairs_kept']} of "
             f"{r['pairs_total']} (edge, span) pairs kept ({r['edges_kept']} edges; {how}), faithfulness "
             f"{r['faithfulness']:.3f}"]
    if r["node_spans"] is not None:
        lines.append("node-spans kept: " + (", ".join(r["node_spans"]) or "none"))
    if r["heldout"] is not None:
        lines.append(f"held-out ({r['heldout']['n']} prompts): faithfulness {r['heldout']['faithfulness']:.3f}")
    lines.append(r["out"])
    return Report(tuple(lines), tuple(r["notes"]) + warnings(r))


def summary(result, engine, run_info: Mapping[str, Any], out, notes: List[str]) -> Dict[str, Any]:
    """What the CLI prints (and the service returns) about a finished discovery."""
    from circuits.circuit.neurons import neuron_lists
    from circuits.circuit.ranking import kept_nodes

    sel, g = result.selection, engine.graph
    out_info = {"task": run_info["task"], "model": run_info["model"], "method": run_info["method"], "out": str(out),
                "granularity": sel.granularity, "mode": sel.mode, "value": sel.value, "k": sel.k, "ranking": sel.ranking,
                "edges_kept": sel.edges_kept, "edges_total": result.edges_total, "faithfulness": result.faithfulness.f,
                "nodes_kept": int(kept_nodes(sel.keep_mask, g)[1:].sum()), "nodes_total": g.n_senders - 1,
                "verified": None if sel.verified is None else {"tested": sel.verified.tested,
                                                                  "removed": len(sel.verified.removed)},
                "neurons_kept": {m: len(i) for m, i in neuron_lists(sel.neurons).items()} if sel.neurons else {},
                "d_mlp": engine.w.d_mlp, "reached": sel.reached, "notes": list(notes),
                "cpr": result.cpr, "cmd": result.cmd, "heldout": None, "stability": None}
    if result.heldout is not None:
        h = result.heldout
        out_info["heldout"] = {"n": h.n, "faithfulness": h.faithfulness.f, "cpr": None if h.curves is None else h.curves.cpr,
                               "cmd": None if h.curves is None else h.curves.cmd}
    if result.stability is not None:
        st = result.stability
        out_info["stability"] = {"k": st.k, "edge_jaccard": st.edge_jaccard, "node_jaccard": st.node_jaccard}
    info = result.scores.info
    out_info["method_info"] = {k: info.get(k) for k in ("complete", "passes_used", "max_passes", "edge_tests") if k in info}
    return out_info


def present(r: Mapping[str, Any]) -> Report:
    if r.get("positional"):
        return present_positional(r)
    head = f"{r['task']} on {r['model']} with {r['method']}"
    if r["granularity"] == "node":
        lines = [f"{head}: {r['nodes_kept']} of {r['nodes_total']} nodes kept ({r['edges_kept']} edges among them; "
                 f"{r['mode']} {r['value']:g}), faithfulness {r['faithfulness']:.3f}"]
    else:
        how = (f"acdc, tau {r['value']:g}: {r['k']} kept before pruning" if r["mode"] == "acdc"
               else f"{r['mode']} {r['value']:g}, k = {r['k']}")
        if r["ranking"] != "abs":
            how += f", ranking {r['ranking']}"
        if r["verified"] is not None:
            how += f"; verified: {r['verified']['removed']} of {r['verified']['tested']} edges removed"
        lines = [f"{head}: {r['edges_kept']} of {r['edges_total']} edges kept ({how}), faithfulness {r['faithfulness']:.3f}"]
    if r["neurons_kept"]:
        lines.append("neurons kept: " + ", ".join(f"{m} {k} of {r['d_mlp']}" for m, k in r["neurons_kept"].items()))
    if r["cpr"] is not None:
        lines.append(f"CPR {r['cpr']:.3f}, CMD {r['cmd']:.3f} (MIB's: signed and |score| rankings, int(pct * N) edges)")
    h = r["heldout"]
    if h is not None:
        line = f"held-out ({h['n']} prompts): faithfulness {h['faithfulness']:.3f}"
        if h["cpr"] is not None:
            line += f", CPR {h['cpr']:.3f}, CMD {h['cmd']:.3f}"
        lines.append(line)
    if r["stability"] is not None:
        st = r["stability"]
        lines.append(f"stability ({st['k']} bootstrap resamples): edge Jaccard {st['edge_jaccard']:.3f}, "
                     f"node Jaccard {st['node_jaccard']:.3f}")
    lines.append(r["out"])
    return Report(tuple(lines), tuple(r["notes"]) + warnings(r))


def warnings(r: Mapping[str, Any]) -> tuple:
    info, out = r["method_info"], []
    if info.get("complete") is False and "passes_used" in info:
        out.append(f"warning: {r['method']} stopped at its budget ({info.get('passes_used')} of --max-passes "
                   f"{info.get('max_passes')} passes) before exploring every receiver that passed --path-threshold; "
                   "the circuit has the edges found so far (raise --max-passes to search further)")
    elif info.get("complete") is False:
        out.append(f"warning: {r['method']} stopped early after {info.get('edge_tests', '?')} edge tests (--max-tests); "
                   "untested edges were kept and score 0")
    if not r["reached"]:
        out.append(f"warning: no circuit reached faithfulness {r['value']:g}; kept the most faithful one tried")
    return tuple(out)


DISCOVER = Job(name="discover", help="Score every edge, keep a faithful circuit, and write it (JSON, DOT, SVG, scores, "
               "manifest, report) to --out.", options=OPTIONS, run=run, present=present, folder=True, method_options=True)
