"""``circuits evaluate-circuit``: recompute a saved circuit's faithfulness, independently of discovery."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from circuits.errors import CircuitsError
from circuits.jobs.base import Job, Report
from circuits.jobs.common import (BATCH_SIZE, DEVICE, DTYPE, MAX_MEMORY, MODEL_HELP, TASK_FILE, auto_batch, batch_plan,
                                  build_prompts, check_keep_neurons, load_engine, parse_mlp_layers, resolve_task)
from circuits.options import Option


def _ablation(text: str) -> str:
    from circuits.jobs.common import ABLATIONS

    if text not in ABLATIONS:
        raise CircuitsError(f"--ablation must be one of {', '.join(ABLATIONS)} (got {text!r})")
    return text


OPTIONS = (
    Option("circuit", Path, None, "A circuit.json file, or a run folder that holds one.", argument=True, required=True),
    Option("model", str, None, MODEL_HELP + " (default: the circuit's model)", short="-m"),
    Option("n", int, None, "Number of prompts (default: the circuit's n, else 100).", minimum=1),
    Option("seed", int, None, "Prompt seed (default: the circuit's seed, else 0)."),
    Option("data", Path, None, "Read prompts from a CSV or JSONL file (default: the circuit's --data, else sample).",
           served=False),
    Option("holdout", float, None, "Also report faithfulness on this held-out fraction, split as discover does "
           "(default: the circuit's, else 0).", minimum=0.0, maximum=0.99),
    Option("task", str, None, "Task (default: the circuit's task)."),
    TASK_FILE,
    Option("ablation", str, None, "corrupted, mean, mean-positions or zero (default: the circuit's, else corrupted).",
           parse=_ablation),
    Option("metric", str, None, "task or kl (default: the circuit's, else task).", choices=("task", "kl")),
    BATCH_SIZE, MAX_MEMORY, DTYPE, DEVICE,
    Option("neurons", str, None, "Reduce these MLPs of the circuit (e.g. m10) to their top neurons; needs --keep-neurons."),
    Option("keep_neurons", int, None, "How many neurons each --neurons MLP keeps (top |score|)."),
    Option("neuron_method", str, "eap", "Method whose neuron scores rank the neurons (eap, eap-ig, activation-patching)."),
    Option("save", Path, None, "Write the evaluated circuit (with its neurons) to this .json file.", served=False),
)


@dataclass(frozen=True)
class Request:
    """The request with the circuit's own settings filled in."""

    G: Any
    model: str
    task: Any
    task_name: str
    n: int
    seed: int
    ablation: str
    metric: str
    data: Optional[Path]
    holdout: float
    reduce: tuple


def resolve(values: Mapping[str, Any]) -> Request:
    from circuits.circuit.discover import holdout_count
    from circuits.graphs.files import load_circuit

    G = load_circuit(values["circuit"])
    meta = G.graph
    model = values["model"] or meta.get("model")
    if not model:
        raise CircuitsError(f"{values['circuit']} does not name its model; pass --model")
    task_name = values["task"] or meta.get("task")
    if values["task_file"] is None and not task_name:
        raise CircuitsError(f"{values['circuit']} does not name its task; pass --task or --task-file")
    task_obj = resolve_task(task_name, values["task_file"])
    n = values["n"] if values["n"] is not None else int(meta.get("n") or 100)
    seed = values["seed"] if values["seed"] is not None else int(meta.get("seed") or 0)
    ablation = _ablation(values["ablation"] or meta.get("ablation") or "corrupted")
    metric = values["metric"] or meta.get("metric") or "task"
    if metric not in ("task", "kl"):
        raise CircuitsError(f"--metric must be task or kl (got {metric!r})")
    layers = parse_mlp_layers(values["neurons"]) or ()
    check_keep_neurons(values["keep_neurons"], layers)
    for layer in layers:
        if f"m{layer}" not in G:
            raise CircuitsError(f"--neurons m{layer}: the circuit has no m{layer} to reduce; name one of its MLPs")
    data = values["data"] if values["data"] is not None else (Path(meta["data"]) if meta.get("data") else None)
    holdout = float(values["holdout"] if values["holdout"] is not None else (meta.get("holdout") or 0.0))
    holdout_count(holdout, n)
    return Request(G, model, task_obj, getattr(task_obj, "name", task_name), n, seed, ablation, metric, data, holdout, layers)


def _neurons(values, req: Request, engine, scored, metric_fn, batch: int) -> dict:
    """The circuit's reduced MLPs, plus those ``--neurons ... --keep-neurons K`` reduces now."""
    from circuits.circuit.neurons import neuron_masks, score_top_neurons
    from circuits.graphs.build import circuit_neurons
    from circuits.registry import get_method

    masks = neuron_masks(circuit_neurons(req.G), n_layers=engine.w.n_layers, d_mlp=engine.w.d_mlp)
    if req.reduce:
        check_keep_neurons(values["keep_neurons"], req.reduce, engine.w.d_mlp)
        get_method(values["neuron_method"])  # an unknown name is a one-line error before any work
        masks.update(score_top_neurons(engine, scored, metric_fn, req.reduce, values["keep_neurons"],
                                       method=values["neuron_method"], ablation=req.ablation, batch_size=batch))
    return masks


def run(values: Mapping[str, Any], *, progress, load, command=None) -> Dict[str, Any]:
    from circuits.circuit.discover import split_holdout
    from circuits.circuit.faithfulness import faithfulness
    from circuits.circuit.neurons import neuron_lists
    from circuits.graphs.build import edge_names
    from circuits.methods.metrics import build_metric

    req = resolve(values)
    batch, budget = batch_plan(values["batch_size"], values["max_memory"])
    tokenizer, engine = load_engine(load, req.model, values["device"], values["dtype"])
    keep = engine.graph.keep_mask(edge_names(req.G), model=req.model)
    dataset = build_prompts(req.task, tokenizer, n=req.n, seed=req.seed, data=req.data)
    scored, heldout = split_holdout(dataset, req.holdout, seed=req.seed)
    notes: list = []
    if batch is None:
        batch = auto_batch(engine, dataset, req.task, budget, req.ablation, notes).batch_size
    metric_fn = build_metric(req.metric, req.task, engine, dataset, batch_size=batch)
    masks = _neurons(values, req, engine, scored, metric_fn, batch)
    faith = faithfulness(engine, scored, metric_fn, keep, ablation=req.ablation, batch_size=batch, neurons=masks)
    if values["save"] is not None:
        save_circuit(req.G, values["save"], neuron_lists(masks), faith.f, model=req.model, task=req.task_name,
                     n=len(dataset), seed=req.seed, ablation=req.ablation, metric=req.metric)
    result = {"faithfulness": faith.f, "edges": int(keep.sum()), "metric_full": faith.m_full,
              "metric_empty": faith.m_empty, "metric_circuit": faith.m_circuit, "n": len(dataset),
              "n_scored": len(scored), "seed": req.seed, "data": None if req.data is None else str(req.data),
              "model": req.model, "task": req.task_name, "ablation": req.ablation, "metric": req.metric,
              "neurons_kept": neuron_lists(masks), "dtype": values["dtype"],
              "n_heldout": 0 if heldout is None else len(heldout), "faithfulness_heldout": None}
    if heldout is not None:
        held = faithfulness(engine, heldout, metric_fn, keep, ablation=req.ablation, batch_size=batch, neurons=masks)
        result.update(faithfulness_heldout=held.f, metric_full_heldout=held.m_full,
                      metric_circuit_heldout=held.m_circuit, metric_empty_heldout=held.m_empty)
    from circuits.graphs.build import jsonable

    return jsonable({**result, "_d_mlp": engine.w.d_mlp, "_save": None if values["save"] is None else str(values["save"]),
                     "_notes": notes})


def save_circuit(G, path: Path, neurons: dict, f: float, **meta) -> None:
    """Write the evaluated circuit (its edges, the neurons it was evaluated with) as circuit.json-shaped JSON."""
    import copy

    from circuits.graphs.build import add_neurons, write_json

    out = copy.deepcopy(G)
    out.graph.update(meta, faithfulness=f)
    for node in [n for n, d in out.nodes(data=True) if d.get("kind") == "neuron"]:
        out.remove_node(node)
    for _, data in out.nodes(data=True):
        data.pop("neurons", None)
    out.graph.pop("neurons", None)
    if neurons:
        add_neurons(out, neurons)
    try:
        write_json(out, path)
    except OSError as exc:
        raise CircuitsError(f"cannot write --save {path} ({exc.strerror or exc}); pass a writable file path") from None


def present(r: Mapping[str, Any]) -> Report:
    held = r["faithfulness_heldout"] is not None
    lines = [f"{r['task']} on {r['model']}: {r['edges']} edges, {r['n']} prompts (seed {r['seed']}, "
             f"{r['ablation']} ablation, metric {r['metric']})",
             f"  faithfulness     {r['faithfulness']:.4f}" + (f" ({r['n_scored']} prompts)" if held else "")]
    if held:
        lines.append(f"  held-out         {r['faithfulness_heldout']:.4f} ({r['n_heldout']} prompts)")
    lines += [f"  {mlp} reduced to {len(idx)} of {r['_d_mlp']} neurons" for mlp, idx in r["neurons_kept"].items()]
    if r["_save"] is not None:
        lines.append(f"  circuit written to {r['_save']}")
    return Report(tuple(lines), tuple(r["_notes"]))


def public(result: Mapping[str, Any]) -> Dict[str, Any]:
    """The result without the fields only the CLI's text uses."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


EVALUATE_CIRCUIT = Job(name="evaluate-circuit", help=(
    "Recompute a saved circuit's faithfulness, independently of discovery.\n\nThe circuit's edges are used as given "
    "(not pruned).  Task, n, seed and ablation default to the ones recorded in the circuit, so a run folder's "
    "faithfulness is reproduced exactly.  MLPs the circuit keeps through some neurons only (``m10.n123`` nodes) are "
    "evaluated that way; ``--neurons m10 --keep-neurons 10`` reduces m10 to its 10 top-scored neurons first."),
    options=OPTIONS, run=run, present=present, extra={"json": True, "public": public})
