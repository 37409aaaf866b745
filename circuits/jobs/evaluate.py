"""``circuits evaluate``: a task's reported metrics on the full model, mean and std over the prompts."""
from __future__ import annotations

from typing import Any, Dict, Mapping

from circuits.jobs.base import Job, Report
from circuits.jobs.common import DATA, DEVICE, MODEL, TASK, TASK_FILE, build_prompts, resolve_task, stats
from circuits.options import Option


def run(values: Mapping[str, Any], *, progress, load, command=None) -> Dict[str, Any]:
    from circuits.data.evaluation import evaluate_model

    task_obj = resolve_task(values["task"], values["task_file"])
    loaded = load(values["model"], device=values["device"])
    dataset = build_prompts(task_obj, loaded.tokenizer, n=values["n"], seed=values["seed"], data=values["data"])
    metrics = {k: stats(v) for k, v in evaluate_model(task_obj, loaded, dataset).items()}
    return {"task": task_obj.name, "model": values["model"], "n": len(dataset), "seed": values["seed"], "metrics": metrics}


def present(result: Mapping[str, Any]) -> Report:
    lines = [f"{result['task']} on {result['model']}: {result['n']} prompts, seed {result['seed']}"]
    lines += [f"  {name:<24} {s['mean']:+.4f} ± {s['std']:.4f}" for name, s in result["metrics"].items()]
    return Report(tuple(lines))


EVALUATE = Job(
    name="evaluate",
    help="Evaluate a model on a task: each metric's mean and std over the prompts.",
    options=(TASK, MODEL, Option("n", int, 100, "Number of prompts.", minimum=1),
             Option("seed", int, 0, "Seed for prompt sampling."),
             Option("data", DATA.type, None, "Read prompts from a CSV or JSONL file instead of sampling.", served=False),
             TASK_FILE, DEVICE),
    run=run, present=present, extra={"json": True})

