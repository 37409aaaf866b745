"""``circuits analyze greater-than``: pictures, tables and an offline HTML report of a model (and a circuit).

Imports nothing heavy until it runs, so ``circuits analyze --help`` stays quick.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from circuits.cli.commands_core import MODEL_HELP, parse_mlp_layers
from circuits.errors import CircuitsError

__all__ = ["greater_than"]


def greater_than(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the pictures, tables and report.html (must be empty unless --force)."),
    circuit: Optional[Path] = typer.Option(None, "--circuit", help="A circuit.json, or a run folder holding one: also analyse the circuit alone."),
    n: int = typer.Option(200, "--n", help="Number of prompts."),
    seed: int = typer.Option(0, "--seed", help="Seed for prompt sampling."),
    data: Optional[Path] = typer.Option(None, "--data", help="Read prompts from a CSV or JSONL file instead of sampling (formats as in `circuits evaluate`)."),
    neurons: Optional[str] = typer.Option(None, "--neurons", help="MLPs whose neurons are analysed, e.g. m10 or m8,m9 (default: m<L-2>, the second-to-last MLP)."),
    top_k: int = typer.Option(10, "--top-k", help="Top neurons per MLP."),
    candidates: int = typer.Option(100, "--candidates",
                                   help="Neurons per MLP whose effect is patched exactly: the strongest by attribution patching (0: every neuron)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Prompts per engine pass (0: all at once)."),
    device: str = typer.Option("cpu", "--device", help="torch device (cpu, cuda)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty --out folder."),
) -> None:
    """Heatmaps of p(YY'|YY), PD/CS by YY, attention, MLP and neuron analyses, and report.html, written to --out."""
    from circuits.run_folder import check_out_dir

    if n < 1:
        raise CircuitsError(f"--n must be at least 1 (got {n})")
    if top_k < 1:
        raise CircuitsError(f"--top-k must be at least 1 (got {top_k})")
    if candidates < 0:
        raise CircuitsError(f"--candidates must be 0 (all neurons) or more (got {candidates})")
    if batch_size < 0:
        raise CircuitsError(f"--batch-size must be 0 (all prompts) or more (got {batch_size})")
    neuron_layers = parse_mlp_layers(neurons)
    if neuron_layers == ():
        raise CircuitsError("--neurons takes MLP names like m10 or m8,m9 (got nothing)")
    check_out_dir(out, force)
    graph_of_circuit = None
    if circuit is not None:
        from circuits.graphs.build import load_circuit

        graph_of_circuit = load_circuit(circuit)

    from circuits.analysis.circuit import from_graph
    from circuits.tasks.greater_than_analysis.analysis import analyze, write
    from circuits.cli.commands_discover import ProgressBars
    from circuits.engine import GraphEngine
    from circuits.evaluation import model_forward
    from circuits.models import load_model
    from circuits.registry import get_task

    started = time.perf_counter()
    task = get_task("greater-than")
    loaded = load_model(model, device=device)
    engine = GraphEngine.from_model(loaded)
    L = engine.w.n_layers
    for layer in neuron_layers or ():
        if layer >= L:
            raise CircuitsError(f"--neurons m{layer}: {model} has MLPs m0..m{L - 1}")
    circ = None
    if graph_of_circuit is not None:
        circ = from_graph(graph_of_circuit, engine.graph, source=str(circuit), model=model)
    dataset = task.build(loaded.tokenizer, n=n, seed=seed, **({"data": data} if data is not None else {}))
    bars = ProgressBars()
    try:
        result = analyze(engine, dataset, task, model=model, seed=seed, circuit=circ, forward=model_forward(loaded),
                         tokenizer=loaded.tokenizer, neuron_layers=neuron_layers, top_k=top_k,
                         candidates=candidates or None, batch_size=batch_size, progress=bars)
    finally:
        bars.close()
    result.timings["total"] = time.perf_counter() - started
    write(out, result)
    line = f"greater-than on {model}: {result.n} prompts, model PD {result.full.pd_mean:+.4f}, CS {result.full.cs_mean:+.4f}"
    if result.circuit is not None:
        line += f"; circuit ({circ.n_edges} edges) PD {result.circuit.pd_mean:+.4f}, CS {result.circuit.cs_mean:+.4f}"
    typer.echo(line)
    typer.echo(str(out / "report.html"))
