"""``circuits discover`` and ``circuits evaluate-circuit``."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from circuits import names
from circuits.cli import app
from circuits.cli.commands_core import MODEL_HELP, parse_mlp_layers, resolve_task
from circuits.errors import CircuitsError
from circuits.cli.method_flags import MethodFlagsCommand, given_method_params
from circuits.methods.base import VERIFY_AUTO_EDGES, VERIFY_TOLERANCE, MethodOptions, option_values


class ProgressBars:
    """A ``Progress`` callback drawing tqdm bars on stderr (only on a terminal): a new bar whenever
    the total changes or the count goes back.  ``ProgressBars.sink``, when set (by the service's
    worker), also receives every report."""

    sink = None  # Optional[Callable[[int, int, str], None]]

    def __init__(self) -> None:
        self.bar = None
        self.total: Optional[int] = None
        self.done = 0

    def __call__(self, done: int, total: int, message: str) -> None:
        from tqdm import tqdm

        if ProgressBars.sink is not None:
            ProgressBars.sink(done, total, message)
        if self.bar is None or total != self.total or done < self.done:
            self.close()
            self.bar = tqdm(total=total, desc=message, file=sys.stderr, leave=False, disable=None, dynamic_ncols=True)
            self.total, self.done = total, 0
        self.bar.set_description_str(message, refresh=False)
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


ABLATION_HELP = ("What patched edges carry: corrupted (the corrupted run), mean (the clean mean over prompts, per "
                 "position), mean-positions (over prompts and positions) or zero.")
DATA_HELP = "Read prompts from a CSV or JSONL file instead of sampling (at most --n of them; formats as in `circuits evaluate`)."
HOLDOUT_HELP = ("Fraction of the prompts held out: scoring and selection never see them, and the circuit's "
                "faithfulness is also reported on them (0: off) [default: 0.2, or 0 when that is under one prompt].")
DEFAULT_HOLDOUT = 0.2
METRIC_HELP = ("Metric to score and select with: task (the task's own) or kl (KL divergence of the patched "
               "next-token distribution from the clean one at the answer positions).")


def _check_ablation(ablation: str) -> str:
    from circuits.ablation import ABLATIONS

    if ablation not in ABLATIONS:
        raise CircuitsError(f"--ablation must be one of {', '.join(ABLATIONS)} (got {ablation!r})")
    return ablation


def _selection_spec(top_k: Optional[int], threshold: Optional[float], target: Optional[float], default: Optional[str] = None):
    """The selection mode given on the command line, else the method's own default (``acdc``), else F = 0.9."""
    from circuits.discover import SelectionSpec

    given = [(flag, v) for flag, v in (("--top-k", top_k), ("--threshold", threshold), ("--target-faithfulness", target))
             if v is not None]
    if len(given) > 1:
        raise CircuitsError(f"choose one selection mode: {' and '.join(f for f, _ in given)} were both given")
    if top_k is not None:
        return SelectionSpec("top-k", top_k)
    if threshold is not None:
        return SelectionSpec("threshold", threshold)
    if target is None and default == "acdc":
        return SelectionSpec("acdc", 0.0)
    return SelectionSpec("target-faithfulness", 0.9 if target is None else target)


DTYPE_HELP = "Precision of the model and the engine's buffers: float32, bfloat16 or float16 (scores sum in float32)."
BATCH_HELP = "Prompts per forward pass (0: all at once; auto: the largest batch that fits --max-memory)."
MEMORY_HELP = "Memory budget of --batch-size auto, e.g. 16GB or 4GiB (default: 80% of the free RAM or GPU memory)."


def _load(model: str, device: str, dtype: str = "float32"):
    """The booted model's tokenizer and its engine in ``dtype`` (the bridge is dropped: the engine has its weights)."""
    from circuits.engine import GraphEngine
    from circuits.memory import parse_dtype
    from circuits.models import load_model
    from circuits.models.weights import cast_weights

    torch_dtype = parse_dtype(dtype)
    loaded = load_model(model, device=device)
    weights = GraphEngine.from_model(loaded).w  # refuses architectures the engine does not implement
    if weights.W_E.dtype != torch_dtype:
        weights = cast_weights(weights, dtype=torch_dtype)
    return loaded.tokenizer, GraphEngine(weights)


def _auto_batch(engine, dataset, task_obj, budget: Optional[int], ablation: str):
    """``--batch-size auto``: the probe's choice, said on stderr."""
    from circuits.memory import auto_batch_size

    auto = auto_batch_size(engine, dataset, task_obj.metric, max_memory=budget, ablation=ablation)
    typer.echo(f"--batch-size auto: {auto.batch_size} prompts per batch ({auto.bytes_per_prompt / 2 ** 20:.1f} MiB per prompt "
               f"measured on {auto.probe_prompts}; budget {auto.max_memory / 2 ** 30:.2f} GiB)", err=True)
    return auto


def _batch_size(text: str, max_memory: Optional[str]):
    """``--batch-size`` (None for auto) and the ``--max-memory`` budget in bytes (None: the default)."""
    from circuits.memory import parse_batch_size, parse_memory

    batch = parse_batch_size(text)
    budget = None if max_memory is None else parse_memory(max_memory)
    if budget is not None and batch is not None:
        raise CircuitsError("--max-memory is the budget of --batch-size auto; pass --batch-size auto or drop --max-memory")
    return batch, budget


@app.command(cls=MethodFlagsCommand)
def discover(
    ctx: typer.Context,
    task: Optional[str] = typer.Argument(None, help="Task name (see `circuits tasks list`)."),
    model: str = typer.Option("gpt2", "--model", "-m", help=MODEL_HELP),
    method: str = typer.Option(..., "--method", help="Scoring method (see `circuits methods list`): eap, eap-ig, "
                               "activation-patching, path-patching, acdc, or a plugin's. Each method's own options follow."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (must be empty unless --force)."),
    n: int = typer.Option(100, "--n", help="Number of prompts."),
    seed: int = typer.Option(0, "--seed", help="Seed for prompt sampling (and for choosing the held-out prompts)."),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
    holdout: Optional[float] = typer.Option(None, "--holdout", help=HOLDOUT_HELP, show_default=False),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep the K first-ranked edges (then prune); for a node method (activation-patching), the K nodes."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Keep every edge (node, for a node method) with |score| >= T (--ranking signed: -score >= T), then prune."),
    target: Optional[float] = typer.Option(None, "--target-faithfulness",
                                           help="Keep the smallest top-k circuit with faithfulness >= F [default: 0.9 when no mode "
                                                "is given; acdc keeps its own circuit]."),
    ranking: str = typer.Option("abs", "--ranking",
                                help="Order of the edges (nodes) the selection and the curve take: abs (largest |score| first) or "
                                     "signed (most helpful first, as MIB ranks for CPR: finds the small circuits that push the "
                                     "behaviour, without the parts that work against it)."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify", show_default=False,
                                          help=f"Check each edge of the chosen circuit by patching and drop those that change "
                                               f"nothing [default: on for --target-faithfulness circuits of at most "
                                               f"{VERIFY_AUTO_EDGES} edges]."),
    verify_tolerance: float = typer.Option(VERIFY_TOLERANCE, "--verify-tolerance",
                                           help="The most verification may move the circuit's metric, as a fraction of the "
                                                "full model's effect."),
    ablation: str = typer.Option("corrupted", "--ablation", help=ABLATION_HELP),
    metric: str = typer.Option("task", "--metric", help=METRIC_HELP),
    neurons: Optional[str] = typer.Option(None, "--neurons", help="Score the neurons of these MLPs, e.g. m8,m9."),
    keep_neurons: Optional[int] = typer.Option(None, "--keep-neurons",
                                               help="Keep each --neurons MLP through its K top-scored neurons only (the others are patched)."),
    batch_size: str = typer.Option("0", "--batch-size", help=BATCH_HELP),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MEMORY_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    task_file: Optional[Path] = typer.Option(None, "--task-file", help="Load the task from a local Python file."),
    device: str = typer.Option("cpu", "--device", help="torch device (cpu, cuda)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty --out folder."),
    positions: bool = typer.Option(False, "--positions", help="Score and keep edges per span of the prompt (the task's "
                                   "schema, or each position when it has none): a circuit of (edge, span) pairs (eap, eap-ig)."),
    span_aggregate: str = typer.Option("sum", "--span-aggregate", help="--positions: how a span's positions combine: sum, mean or max."),
) -> None:
    """Score every edge, keep a faithful circuit, and write it (JSON, DOT, SVG, scores, manifest, report) to --out."""
    from circuits.discover import check_selection, holdout_count, split_holdout
    from circuits.metrics import build_metric, check_metric
    from circuits.run_folder import check_out_dir

    _check_ablation(ablation)
    check_metric(metric)
    if holdout is not None:
        holdout_count(holdout, n)  # checked before the model loads (and again on the prompts built)
    neuron_layers = parse_mlp_layers(neurons) or ()
    from circuits.registry import get_method

    method_obj = get_method(method)
    spec = _selection_spec(top_k, threshold, target, getattr(method_obj, "default_selection", None))
    from dataclasses import replace

    spec = replace(spec, ranking=ranking, verify=verify, verify_tolerance=verify_tolerance)
    check_selection(spec, method_obj)  # refused before the model loads
    if positions:
        from circuits.positions import check_positional

        check_positional(method_obj, spec, span_aggregate, neuron_layers)
    if keep_neurons is not None:
        if not neuron_layers:
            raise CircuitsError("--keep-neurons needs --neurons: name the MLPs to reduce, e.g. --neurons m10 --keep-neurons 10")
        if keep_neurons < 1:
            raise CircuitsError(f"--keep-neurons must be at least 1 (got {keep_neurons})")
        spec = replace(spec, keep_neurons=keep_neurons)
    if n < 1:
        raise CircuitsError(f"--n must be at least 1 (got {n})")
    batch, budget = _batch_size(batch_size, max_memory)
    from circuits.memory import parse_dtype

    parse_dtype(dtype)
    params = option_values(method_obj, given_method_params(ctx))  # the method's own options, checked before the model loads
    check_out_dir(out, force)
    task_obj = resolve_task(task, task_file)

    from circuits.discover import discover as run_discovery
    from circuits.run_folder import write_run

    options = MethodOptions(ablation=ablation, neurons=tuple(names.format_node(names.mlp(layer)) for layer in neuron_layers),
                            batch_size=batch or 0, params=params)
    timings = {}
    t = time.perf_counter()
    tokenizer, engine = _load(model, device, dtype)
    timings["load"] = time.perf_counter() - t
    g = engine.graph
    for layer in neuron_layers:
        if layer >= g.n_layers:
            raise CircuitsError(f"--neurons m{layer}: the model has MLPs m0..m{g.n_layers - 1}")
    t = time.perf_counter()
    dataset = _build(task_obj, tokenizer, n=n, seed=seed, data=data)
    if holdout is None:  # the default holds out 20% when that is at least one prompt
        holdout = DEFAULT_HOLDOUT if DEFAULT_HOLDOUT * len(dataset) >= 1 else 0.0
        if holdout == 0.0:
            typer.echo(f"note: {len(dataset)} prompts are too few to hold out {DEFAULT_HOLDOUT:g}; nothing is held out", err=True)
    scored, heldout = split_holdout(dataset, holdout, seed=seed)
    timings["dataset"] = time.perf_counter() - t

    if keep_neurons is not None and keep_neurons > engine.w.d_mlp:
        raise CircuitsError(f"--keep-neurons {keep_neurons}: this model's MLPs have {engine.w.d_mlp} neurons; pass fewer")
    from circuits.memory import PeakMeter

    meter = PeakMeter.try_start(device)  # the manifest's peak memory growth over the model and prompts
    auto, extra = None, {}
    if batch is None:
        t = time.perf_counter()
        auto = _auto_batch(engine, dataset, task_obj, budget, ablation)
        batch, timings["batch_probe"] = auto.batch_size, time.perf_counter() - t
        extra = {"cache_bytes": auto.cache_bytes}
    from dataclasses import replace as with_batch

    options = with_batch(options, batch_size=batch)
    bars = ProgressBars()
    run = {"command": ["circuits", *sys.argv[1:]], "task": getattr(task_obj, "name", task), "model": model,
           "method": method, "metric": metric, "n": len(dataset), "n_scored": len(scored), "holdout": holdout,
           "data": None if data is None else str(data), "seed": seed, "device": device, "dtype": dtype,
           "batch_size": batch, "batch_size_auto": None if auto is None else auto.manifest()}
    if positions:
        return _discover_positions(engine, scored, heldout, metric_fn=build_metric(metric, task_obj, engine, dataset, batch_size=batch),
                                   method=method_obj, options=options, spec=spec, aggregate=span_aggregate, run=run,
                                   meter=meter, out=out, force=force, timings=timings, extra=extra)
    try:
        metric_fn = build_metric(metric, task_obj, engine, dataset, batch_size=batch)
        result = run_discovery(engine, scored, metric_fn, method_obj, options, spec, heldout=heldout, progress=bars, **extra)
    finally:
        bars.close()
    if meter is not None:
        run["memory"] = meter.report()
    d_model = getattr(getattr(engine, "w", None), "d_model", None)
    if isinstance(d_model, int):
        run["d_model"] = d_model  # EAP-IG's graph files need it (cfg.d_model)
    write_run(out, result, run, timings=timings, force=force)

    sel = result.selection
    how = f"acdc, tau {sel.value:g}: {sel.k} kept before pruning" if sel.mode == "acdc" else f"{sel.mode} {sel.value:g}, k = {sel.k}"
    if sel.granularity == "node":
        from circuits.ranking import kept_nodes

        nodes = int(kept_nodes(sel.keep_mask, engine.graph)[1:].sum())
        typer.echo(f"{run['task']} on {model} with {method}: {nodes} of {engine.graph.n_senders - 1} nodes kept "
                   f"({sel.edges_kept} edges among them; {sel.mode} {sel.value:g}), faithfulness {result.faithfulness.f:.3f}")
    else:
        if sel.ranking != "abs":
            how += f", ranking {sel.ranking}"
        if sel.verified is not None:
            how += f"; verified: {len(sel.verified.removed)} of {sel.verified.tested} edges removed"
        typer.echo(f"{run['task']} on {model} with {method}: {sel.edges_kept} of {result.edges_total} edges kept "
                   f"({how}), faithfulness {result.faithfulness.f:.3f}")
    if sel.neurons:
        from circuits.neurons import neuron_lists

        typer.echo("neurons kept: " + ", ".join(f"{mlp} {len(idx)} of {engine.w.d_mlp}"
                                                for mlp, idx in neuron_lists(sel.neurons).items()))
    if result.curve is not None:
        typer.echo(f"CPR {result.curve.cpr:.3f}, CMD {result.curve.cmd:.3f}")
    if result.heldout is not None:
        h = result.heldout
        line = f"held-out ({h.n} prompts): faithfulness {h.faithfulness.f:.3f}"
        if h.curve is not None:
            line += f", CPR {h.curve.cpr:.3f}, CMD {h.curve.cmd:.3f}"
        typer.echo(line)
    info = result.scores.info
    if info.get("complete") is False and "passes_used" in info:
        typer.echo(f"warning: {method} stopped at its budget ({info.get('passes_used')} of --max-passes "
                   f"{info.get('max_passes')} passes) before exploring every receiver that passed --path-threshold; "
                   "the circuit has the edges found so far (raise --max-passes to search further)", err=True)
    elif info.get("complete") is False:
        typer.echo(f"warning: {method} stopped early after {info.get('edge_tests', '?')} edge tests (--max-tests); "
                   "untested edges were kept and score 0", err=True)
    if not sel.reached:
        typer.echo(f"warning: no circuit reached faithfulness {sel.value:g}; kept the most faithful one tried", err=True)
    typer.echo(str(out))


def _discover_positions(engine, scored, heldout, *, metric_fn, method, options, spec, aggregate, run, meter, out, force,
                        timings, extra) -> None:
    """``discover --positions``: a circuit of (edge, span) pairs (:mod:`circuits.positions`), written and summarized."""
    from circuits.positions import discover_positions
    from circuits.positions_folder import write_positional_run

    bars = ProgressBars()
    try:
        result = discover_positions(engine, scored, metric_fn, method, options, spec, aggregate=aggregate, heldout=heldout,
                                    progress=bars, **extra)
    finally:
        bars.close()
    if meter is not None:
        run["memory"] = meter.report()
    written = write_positional_run(out, result, run, timings=timings, force=force)
    sel = result.selection
    typer.echo(f"{run['task']} on {run['model']} with {run['method']} by span ({', '.join(result.spans)}): {sel.pairs_kept} of "
               f"{result.pairs_total} (edge, span) pairs kept ({written.manifest['edges_kept']} edges; {sel.mode} {sel.value:g}, "
               f"k = {sel.k}), faithfulness {result.faithfulness.f:.3f}")
    if sel.node_spans is not None:
        typer.echo("node-spans kept: " + (", ".join(f"{n}@{s}" for n, s, _ in sel.node_spans) or "none"))
    if result.heldout is not None:
        typer.echo(f"held-out ({result.n_heldout} prompts): faithfulness {result.heldout.f:.3f}")
    if not sel.reached:
        typer.echo(f"warning: no circuit reached faithfulness {sel.value:g}; kept the most faithful one tried", err=True)
    typer.echo(str(out))


def _build(task_obj, tokenizer, *, n: int, seed: int, data: Optional[Path]):
    """The task's prompts: sampled, or read from ``data`` (as ``circuits evaluate --data`` does)."""
    return task_obj.build(tokenizer, n=n, seed=seed, **({"data": data} if data is not None else {}))


def _keep_mask(G, graph, model: str):
    from circuits.graphs.build import edge_names

    return graph.keep_mask(edge_names(G), model=model)


def _reduce_request(G, neurons: Optional[str], keep_neurons: Optional[int]) -> tuple:
    """The MLP layers ``evaluate-circuit --neurons ... --keep-neurons K`` reduces, checked against the circuit."""
    layers = parse_mlp_layers(neurons) or ()
    if keep_neurons is None:
        if layers:
            raise CircuitsError("--neurons needs --keep-neurons K: how many top neurons each MLP keeps")
        return ()
    if not layers:
        raise CircuitsError("--keep-neurons needs --neurons: name the MLPs to reduce, e.g. --neurons m10 --keep-neurons 10")
    if keep_neurons < 1:
        raise CircuitsError(f"--keep-neurons must be at least 1 (got {keep_neurons})")
    for layer in layers:
        if f"m{layer}" not in G:
            raise CircuitsError(f"--neurons m{layer}: the circuit has no m{layer} to reduce; name one of its MLPs")
    return layers


def _save_circuit(G, path: Path, neurons: dict, f: float, **meta) -> None:
    """Write the evaluated circuit (its edges, the neurons it was evaluated with) as circuit.json-shaped JSON."""
    import copy

    from circuits.graphs.build import add_neurons, write_json

    out = copy.deepcopy(G)
    out.graph.update(meta, faithfulness=f)
    for n in [n for n, d in out.nodes(data=True) if d.get("kind") == "neuron"]:
        out.remove_node(n)
    for _, data in out.nodes(data=True):
        data.pop("neurons", None)
    out.graph.pop("neurons", None)
    if neurons:
        add_neurons(out, neurons)
    try:
        write_json(out, path)
    except OSError as exc:
        raise CircuitsError(f"cannot write --save {path} ({exc.strerror or exc}); pass a writable file path") from None


def _circuit_neurons(G, engine):
    """The saved circuit's reduced MLPs as bool masks, checked against the model."""
    from circuits.graphs.build import circuit_neurons
    from circuits.neurons import neuron_masks

    return neuron_masks(circuit_neurons(G), n_layers=engine.w.n_layers, d_mlp=engine.w.d_mlp)


@app.command("evaluate-circuit")
def evaluate_circuit(
    circuit: Path = typer.Argument(..., metavar="CIRCUIT_JSON_OR_RUN", help="A circuit.json file, or a run folder that holds one."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP + " [default: the circuit's model]"),
    n: Optional[int] = typer.Option(None, "--n", help="Number of prompts [default: the circuit's n, else 100]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Prompt seed [default: the circuit's seed, else 0]."),
    data: Optional[Path] = typer.Option(None, "--data", help="Read prompts from a CSV or JSONL file [default: the circuit's --data, else sample]."),
    holdout: Optional[float] = typer.Option(None, "--holdout", help="Also report faithfulness on this held-out fraction, split as discover does [default: the circuit's, else 0]."),
    task: Optional[str] = typer.Option(None, "--task", help="Task [default: the circuit's task]."),
    task_file: Optional[Path] = typer.Option(None, "--task-file", help="Load the task from a local Python file."),
    ablation: Optional[str] = typer.Option(None, "--ablation", help="corrupted, mean, mean-positions or zero [default: the circuit's, else corrupted]."),
    metric: Optional[str] = typer.Option(None, "--metric", help="task or kl [default: the circuit's, else task]."),
    batch_size: str = typer.Option("0", "--batch-size", help=BATCH_HELP),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help=MEMORY_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    device: str = typer.Option("cpu", "--device", help="torch device (cpu, cuda)."),
    neurons: Optional[str] = typer.Option(None, "--neurons", help="Reduce these MLPs of the circuit (e.g. m10) to their top neurons; needs --keep-neurons."),
    keep_neurons: Optional[int] = typer.Option(None, "--keep-neurons", help="How many neurons each --neurons MLP keeps (top |score|)."),
    neuron_method: str = typer.Option("eap", "--neuron-method", help="Method whose neuron scores rank the neurons (eap, eap-ig, activation-patching)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Write the evaluated circuit (with its neurons) to this .json file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Recompute a saved circuit's faithfulness, independently of discovery.

    The circuit's edges are used as given (not pruned).  Task, n, seed and ablation default to
    the ones recorded in the circuit, so a run folder's faithfulness is reproduced exactly.
    MLPs the circuit keeps through some neurons only (``m10.n123`` nodes) are evaluated that way;
    ``--neurons m10 --keep-neurons 10`` reduces m10 to its 10 top-scored neurons first.
    """
    from circuits.faithfulness import faithfulness
    from circuits.graphs.build import load_circuit

    G = load_circuit(circuit)
    meta = G.graph
    model = model or meta.get("model")
    if not model:
        raise CircuitsError(f"{circuit} does not name its model; pass --model")
    task_name = task or meta.get("task")
    if task_file is None and not task_name:
        raise CircuitsError(f"{circuit} does not name its task; pass --task or --task-file")
    task_obj = resolve_task(task_name, task_file)
    n = n if n is not None else int(meta.get("n") or 100)
    seed = seed if seed is not None else int(meta.get("seed") or 0)
    ablation = _check_ablation(ablation or meta.get("ablation") or "corrupted")
    from circuits.metrics import build_metric, check_metric

    metric = check_metric(metric or meta.get("metric") or "task")
    if n < 1:
        raise CircuitsError(f"--n must be at least 1 (got {n})")
    reduce_layers = _reduce_request(G, neurons, keep_neurons)
    from circuits.discover import holdout_count, split_holdout

    if data is None and meta.get("data"):
        data = Path(meta["data"])
    holdout = float(holdout if holdout is not None else (meta.get("holdout") or 0.0))
    holdout_count(holdout, n)

    batch_size, budget = _batch_size(batch_size, max_memory)
    tokenizer, engine = _load(model, device, dtype)
    keep = _keep_mask(G, engine.graph, model)
    neuron_masks = _circuit_neurons(G, engine)
    dataset = _build(task_obj, tokenizer, n=n, seed=seed, data=data)
    scored, heldout = split_holdout(dataset, holdout, seed=seed)
    if batch_size is None:
        batch_size = _auto_batch(engine, dataset, task_obj, budget, ablation).batch_size
    metric_fn = build_metric(metric, task_obj, engine, dataset, batch_size=batch_size)
    if reduce_layers:
        from circuits.neurons import score_top_neurons

        if keep_neurons > engine.w.d_mlp:
            raise CircuitsError(f"--keep-neurons {keep_neurons}: this model's MLPs have {engine.w.d_mlp} neurons; pass fewer")
        from circuits.registry import get_method

        get_method(neuron_method)  # an unknown name is a one-line error before any work
        neuron_masks.update(score_top_neurons(engine, scored, metric_fn, reduce_layers, keep_neurons,
                                              method=neuron_method, ablation=ablation, batch_size=batch_size))
    faith = faithfulness(engine, scored, metric_fn, keep, ablation=ablation, batch_size=batch_size,
                         neurons=neuron_masks)
    from circuits.neurons import neuron_lists

    if save is not None:
        _save_circuit(G, save, neuron_lists(neuron_masks), faith.f, model=model, task=getattr(task_obj, "name", task_name),
                      n=len(dataset), seed=seed, ablation=ablation, metric=metric)

    result = {"faithfulness": faith.f, "edges": int(keep.sum()), "metric_full": faith.m_full,
              "metric_empty": faith.m_empty, "metric_circuit": faith.m_circuit, "n": len(dataset),
              "n_scored": len(scored), "seed": seed, "data": None if data is None else str(data),
              "model": model, "task": getattr(task_obj, "name", task_name), "ablation": ablation, "metric": metric,
              "neurons_kept": neuron_lists(neuron_masks), "dtype": dtype,
              "n_heldout": 0 if heldout is None else len(heldout), "faithfulness_heldout": None}
    if heldout is not None:
        held = faithfulness(engine, heldout, metric_fn, keep, ablation=ablation, batch_size=batch_size,
                            neurons=neuron_masks)
        result.update(faithfulness_heldout=held.f, metric_full_heldout=held.m_full,
                      metric_circuit_heldout=held.m_circuit, metric_empty_heldout=held.m_empty)
    if as_json:
        from circuits.graphs.build import jsonable

        typer.echo(json.dumps(jsonable(result)))
        return
    typer.echo(f"{result['task']} on {model}: {result['edges']} edges, {len(dataset)} prompts (seed {seed}, "
               f"{ablation} ablation, metric {metric})")
    typer.echo(f"  faithfulness     {faith.f:.4f}" + (f" ({len(scored)} prompts)" if heldout is not None else ""))
    if heldout is not None:
        typer.echo(f"  held-out         {result['faithfulness_heldout']:.4f} ({len(heldout)} prompts)")
    for mlp, idx in result["neurons_kept"].items():
        typer.echo(f"  {mlp} reduced to {len(idx)} of {engine.w.d_mlp} neurons")
    if save is not None:
        typer.echo(f"  circuit written to {save}")
    typer.echo(f"  metric: model {faith.m_full:+.4f}, circuit {faith.m_circuit:+.4f}, all edges patched {faith.m_empty:+.4f}")
