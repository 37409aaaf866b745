"""``circuits tasks list``, ``circuits methods list`` and ``circuits evaluate``."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Tuple

import typer

from circuits.cli import app
from circuits.registry import PluginWarning

_show_warning = warnings.showwarning


def _show_plugin_warning(message, category, filename, lineno, file=None, line=None):
    """A plugin that fails to load is one line on stderr (``warning: plugin 'x' ...``), not a source excerpt."""
    if issubclass(category, PluginWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _show_warning(message, category, filename, lineno, file, line)


warnings.showwarning = _show_plugin_warning

tasks_app = typer.Typer(help="List the tasks that are installed.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")

methods_app = typer.Typer(help="List the scoring methods that are installed.", no_args_is_help=True)
app.add_typer(methods_app, name="methods")

MODEL_HELP = "Model: a hub name (gpt2), a local HF checkpoint folder, a .gguf file, or planted[-deep]."


@tasks_app.command("list")
def tasks_list() -> None:
    """List installed tasks (built-ins and plugins from the circuits.tasks entry point)."""
    from circuits.registry import TASKS, discover

    for name, task in discover(TASKS).items():
        typer.echo(f"{name}\t{getattr(task, 'description', '')}")


@methods_app.command("list")
def methods_list() -> None:
    """List installed scoring methods: name, granularity (edge or node) and cost, one line each."""
    from circuits.registry import METHODS, discover

    for name, method in discover(METHODS).items():
        typer.echo(f"{name}\t{getattr(method, 'granularity', 'edge')}\t{getattr(method, 'cost', '')}")


def parse_mlp_layers(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    """``--neurons m10`` or ``m8,m9`` -> MLP layers in the order given (None when not given)."""
    from circuits import names
    from circuits.errors import CircuitsError

    if text is None:
        return None
    layers = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            node = names.parse_node(part)
        except names.NameError_:
            node = None
        if node is None or node.kind != "mlp":
            raise CircuitsError(f"--neurons takes MLP names like m10 or m8,m9 (got {part!r})")
        layers.append(node.layer)
    return tuple(dict.fromkeys(layers))


def resolve_task(task: Optional[str], task_file: Optional[Path]):
    """The task object named on the command line (a registered name or --task-file)."""
    from circuits.errors import CircuitsError
    from circuits.registry import get_task, load_task_file

    if task_file is not None:
        return load_task_file(task_file)
    if not task:
        raise CircuitsError("name a task (see `circuits tasks list`) or pass --task-file FILE")
    return get_task(task)


def _stats(values) -> dict:
    values = values.double()
    std = float(values.std()) if values.numel() > 1 else 0.0
    return {"mean": float(values.mean()), "std": std}


@app.command()
def evaluate(
    task: Optional[str] = typer.Argument(None, help="Task name (see `circuits tasks list`)."),
    model: str = typer.Option("gpt2", "--model", "-m", help=MODEL_HELP),
    n: int = typer.Option(100, "--n", help="Number of prompts."),
    seed: int = typer.Option(0, "--seed", help="Seed for prompt sampling."),
    data: Optional[Path] = typer.Option(None, "--data", help="Read prompts from a CSV or JSONL file instead of sampling."),
    task_file: Optional[Path] = typer.Option(None, "--task-file", help="Load the task from a local Python file."),
    device: str = typer.Option("cpu", "--device", help="torch device (cpu, cuda)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Evaluate a model on a task: each metric's mean and std over the prompts."""
    from circuits.evaluation import evaluate_model
    from circuits.models import load_model

    task_obj = resolve_task(task, task_file)
    loaded = load_model(model, device=device)
    dataset = task_obj.build(loaded.tokenizer, n=n, seed=seed, **({"data": data} if data else {}))
    metrics = {k: _stats(v) for k, v in evaluate_model(task_obj, loaded, dataset).items()}
    if as_json:
        typer.echo(json.dumps({"task": task_obj.name, "model": model, "n": len(dataset), "seed": seed, "metrics": metrics}))
        return
    typer.echo(f"{task_obj.name} on {model}: {len(dataset)} prompts, seed {seed}")
    for name, s in metrics.items():
        typer.echo(f"  {name:<24} {s['mean']:+.4f} ± {s['std']:.4f}")
