"""``circuits agreement``: how close runs' edge scores are to a gold (edge-patching) run's (no torch)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from circuits.cli.app import app


@app.command("agreement")
def agreement_command(
    runs: List[Path] = typer.Argument(..., metavar="RUN...", help="Run folders written by `circuits discover --out`."),
    gold: Path = typer.Option(..., "--gold", help="The gold run: an `edge-patching` run folder (exact effects)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
) -> None:
    """Compare runs' edge scores with a gold run's, on the edges the gold run scored.

    Per run: Pearson and Spearman correlation, the fraction of edges whose scores have the same
    sign, the overlap of the top 1% and top 5% edges by |score|, and the cost (the run's scoring
    seconds over the gold run's, from the manifests).
    """
    from circuits.bench import agreement

    rows = agreement.compare_runs(runs, gold)
    typer.echo(agreement.as_json(rows, gold) if as_json else agreement.table(rows))
