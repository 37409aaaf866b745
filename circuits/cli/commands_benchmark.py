"""``circuits benchmark``: every method on every task of one model (see :mod:`circuits.bench.benchmark`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.cli.app import app
from circuits.cli.progress import ProgressBars
from circuits.jobs.common import ABLATION_HELP, BOOTSTRAP_HELP, DTYPE_HELP, HOLDOUT_HELP, METRIC_HELP, MODEL_HELP


@app.command()
def benchmark(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    tasks: str = typer.Option(..., "--tasks", help="Tasks, comma-separated, e.g. greater-than,ioi (see `circuits tasks list`)."),
    methods: str = typer.Option(..., "--methods", help="Methods, comma-separated, e.g. eap,eap-ig,acdc (see `circuits methods list`)."),
    out: Path = typer.Option(..., "--out", "-o", help="The benchmark's folder: new, or one of the same settings to resume."),
    n: int = typer.Option(100, "--n", help="Prompts per task."),
    seed: int = typer.Option(0, "--seed", help="Seed for the prompts, the held-out split and the bootstrap."),
    holdout: Optional[float] = typer.Option(None, "--holdout", help=HOLDOUT_HELP, show_default=False),
    ablation: str = typer.Option("corrupted", "--ablation", help=ABLATION_HELP),
    metric: str = typer.Option("task", "--metric", help=METRIC_HELP),
    bootstrap: int = typer.Option(0, "--bootstrap", help=BOOTSTRAP_HELP),
    max_tests: int = typer.Option(0, "--max-tests", help="acdc: stop after N edge tests (0: no limit); the cell is then marked incomplete."),
    batch_size: int = typer.Option(0, "--batch-size", help="Prompts per forward pass (0: all at once)."),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    mib: bool = typer.Option(False, "--mib", help="Also write MIB's submission folders: mib/METHOD/{task}_{model}/importances.json."),
    device: str = typer.Option("cpu", "--device", help="torch device (cpu, cuda)."),
) -> None:
    """Run each method on each task (the model loaded once; discover's default circuit), scored as MIB scores them.

    Writes results.json, results.md (one table per task) and a figure per task to --out; an interrupted benchmark
    resumes where it stopped."""
    import time

    from circuits.bench.benchmark import BenchmarkSpec, check_spec, parse_names, prepare_out, run_benchmark
    from circuits.errors import CircuitsError

    if batch_size < 0:
        raise CircuitsError(f"--batch-size must be 0 (all at once) or more (got {batch_size})")
    spec = BenchmarkSpec(model=model, tasks=parse_names(tasks, "task"), methods=parse_names(methods, "method"), n=n,
                         seed=seed, holdout=holdout, ablation=ablation, metric=metric, bootstrap=bootstrap,
                         max_tests=max_tests, dtype=dtype, batch_size=batch_size, device=device)
    check_spec(spec)
    prepare_out(out, spec)  # refused before the model loads
    started = time.perf_counter()
    t = time.perf_counter()
    from circuits.jobs.common import load_engine
    from circuits.models import load_model

    tokenizer, engine = load_engine(load_model, model, device, dtype)
    typer.echo(f"loaded {model} in {time.perf_counter() - t:.1f} s", err=True)

    def said(cell: dict, resumed: bool) -> None:
        bits = [f"CPR {_f(cell.get('cpr'))}", f"CMD {_f(cell.get('cmd'))}",
                f"held-out f {_f(cell.get('faithfulness_heldout'))}", f"{cell.get('edges_kept')} edges"]
        if cell.get("auroc") is not None:
            bits.append(f"AUROC {_f(cell['auroc'])}")
        if cell.get("stability"):
            bits.append(f"edge Jaccard {_f(cell['stability']['edge_jaccard'])}")
        bits.append("already done" if resumed else f"{cell.get('seconds', 0):.1f} s")
        typer.echo(f"{cell['task']} / {cell['method']}: " + ", ".join(bits))

    bars = ProgressBars()
    try:
        run_benchmark(engine, tokenizer, spec, out, mib=mib, progress=bars, on_cell=said)
    finally:
        bars.close()
    typer.echo(f"{out}: results.md, results.json ({time.perf_counter() - started:.1f} s in all)")


def _f(value) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"
