"""``circuits analyze greater-than``: pictures, tables and an offline HTML report of a model (and a circuit).

A job (``circuits.jobs.Job``), so the CLI and the service run it the same way.  Imports nothing heavy
until it runs, so ``circuits analyze --help`` stays quick.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Mapping

from circuits.errors import CircuitsError
from circuits.jobs.base import Job, Report
from circuits.jobs.common import DEVICE, MODEL, parse_mlp_layers
from circuits.options import Option

__all__ = ["GREATER_THAN"]


def _neurons(text: str) -> str:
    if parse_mlp_layers(text) == ():
        raise CircuitsError("--neurons takes MLP names like m10 or m8,m9 (got nothing)")
    return text


OPTIONS = (
    MODEL,
    Option("out", Path, None, "Folder for the pictures, tables and report.html (must be empty unless --force).",
           short="-o", required=True, served=False),
    Option("circuit", Path, None, "A circuit.json, or a run folder holding one: also analyse the circuit alone."),
    Option("n", int, 200, "Number of prompts.", minimum=1),
    Option("seed", int, 0, "Seed for prompt sampling."),
    Option("data", Path, None, "Read prompts from a CSV or JSONL file instead of sampling (formats as in "
           "`circuits evaluate`).", served=False),
    Option("neurons", str, None, "MLPs whose neurons are analysed, e.g. m10 or m8,m9 (default: m<L-2>, the "
           "second-to-last MLP).", parse=_neurons),
    Option("top_k", int, 10, "Top neurons per MLP.", minimum=1),
    Option("candidates", int, 100, "Neurons per MLP whose effect is patched exactly: the strongest by attribution "
           "patching (0: every neuron).", minimum=0),
    Option("batch_size", int, 32, "Prompts per engine pass (0: all at once).", minimum=0),
    DEVICE,
    Option("force", bool, False, "Write into a non-empty --out folder.", served=False),
)


def run(values: Mapping[str, Any], *, progress, load, command=None) -> Dict[str, Any]:
    from circuits.analysis.circuit import from_graph
    from circuits.circuit.run_folder import check_out_dir
    from circuits.data.evaluation import model_forward
    from circuits.engine.engine import GraphEngine
    from circuits.registry import get_task
    from circuits.tasks.greater_than_analysis.analysis import analyze, write

    neuron_layers = parse_mlp_layers(values["neurons"])
    out, model = Path(values["out"]), values["model"]
    check_out_dir(out, values["force"])
    graph_of_circuit = None
    if values["circuit"] is not None:
        from circuits.graphs.files import load_circuit

        graph_of_circuit = load_circuit(values["circuit"])
    started = time.perf_counter()
    task = get_task("greater-than")
    loaded = load(model, device=values["device"])
    engine = GraphEngine.from_model(loaded)
    L = engine.w.n_layers
    for layer in neuron_layers or ():
        if layer >= L:
            raise CircuitsError(f"--neurons m{layer}: {model} has MLPs m0..m{L - 1}")
    circ = None
    if graph_of_circuit is not None:
        circ = from_graph(graph_of_circuit, engine.graph, source=str(values["circuit"]), model=model)
    data = values["data"]
    dataset = task.build(loaded.tokenizer, n=values["n"], seed=values["seed"], **({"data": data} if data is not None else {}))
    result = analyze(engine, dataset, task, model=model, seed=values["seed"], circuit=circ, forward=model_forward(loaded),
                     tokenizer=loaded.tokenizer, neuron_layers=neuron_layers, top_k=values["top_k"],
                     candidates=values["candidates"] or None, batch_size=values["batch_size"], progress=progress)
    result.timings["total"] = time.perf_counter() - started
    write(out, result)
    return {"model": model, "n": result.n, "pd": result.full.pd_mean, "cs": result.full.cs_mean,
            "circuit": None if result.circuit is None else {"edges": circ.n_edges, "pd": result.circuit.pd_mean,
                                                              "cs": result.circuit.cs_mean},
            "report": str(out / "report.html")}


def present(r: Mapping[str, Any]) -> Report:
    line = f"greater-than on {r['model']}: {r['n']} prompts, model PD {r['pd']:+.4f}, CS {r['cs']:+.4f}"
    if r["circuit"] is not None:
        c = r["circuit"]
        line += f"; circuit ({c['edges']} edges) PD {c['pd']:+.4f}, CS {c['cs']:+.4f}"
    return Report((line, r["report"]))


GREATER_THAN = Job(name="greater-than", help="Heatmaps of p(YY'|YY), PD/CS by YY, attention, MLP and neuron analyses, "
                   "and report.html, written to --out.", options=OPTIONS, run=run, present=present, folder=True)
