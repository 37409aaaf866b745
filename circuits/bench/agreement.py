"""How close a run's edge scores are to a gold run's (``edge-patching``'s exact effects).

Pure Python and numpy over the run folders' ``scores.tsv`` and ``manifest.json``: no torch.  On the
edges the gold run scored, for each run: Pearson and Spearman correlation, the sign agreement, the
overlap of the top 1% and top 5% edges by |score|, and the cost, the run's scoring seconds over the
gold run's.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from circuits.errors import CircuitsError

TOP_FRACTIONS = (0.01, 0.05)


@dataclass(frozen=True)
class RunScores:
    folder: Path
    method: str
    model: str
    seconds: Optional[float]  # the scoring step's seconds (manifest timings), None when not recorded
    scores: Dict[str, float]  # the scored edges only


@dataclass(frozen=True)
class Agreement:
    run: str
    method: str
    edges: int
    pearson: Optional[float]
    spearman: Optional[float]
    sign: float
    top_1: float
    top_5: float
    seconds: Optional[float]
    cost: Optional[float]  # seconds over the gold run's


def read_run(folder: Union[str, Path]) -> RunScores:
    """A run folder's scores (scored edges) and what its manifest says of it."""
    from circuits.graphs.compare import SCORES_FILE, load_scores
    from circuits.circuit.run_folder import MANIFEST_FILE

    folder = Path(folder)
    if not folder.is_dir():
        raise CircuitsError(f"{folder} is not a run folder; pass folders written by `circuits discover --out`")
    manifest_file = folder / MANIFEST_FILE
    if not manifest_file.is_file() or not (folder / SCORES_FILE).is_file():
        raise CircuitsError(f"{folder} has no {MANIFEST_FILE} and {SCORES_FILE}; pass folders written by `circuits discover --out`")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise CircuitsError(f"{manifest_file} is not valid JSON; rerun `circuits discover` to rewrite it") from None
    timings = manifest.get("timings") or {}
    seconds = timings.get("scoring")
    return RunScores(folder=folder, method=str(manifest.get("method", "?")), model=str(manifest.get("model", "?")),
                     seconds=None if seconds is None else float(seconds), scores=load_scores(folder))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks of ``x`` (ties share their average rank)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def pearson(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """Pearson correlation; None when either side is constant."""
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return None if den == 0 else float((a * b).sum()) / den


def top_overlap(gold: np.ndarray, run: np.ndarray, fraction: float) -> float:
    """|top-k of gold ∩ top-k of run| / k by |score|, k = ceil(fraction * n) (at least 1); ties broken by position."""
    k = max(1, math.ceil(fraction * len(gold)))
    g = set(np.argsort(-np.abs(gold), kind="stable")[:k].tolist())
    r = set(np.argsort(-np.abs(run), kind="stable")[:k].tolist())
    return len(g & r) / k


def agreement(run: RunScores, gold: RunScores) -> Agreement:
    """``run`` against ``gold`` on the edges gold scored (``run`` must have scored each of them)."""
    edges = sorted(gold.scores)
    missing = [e for e in edges if e not in run.scores]
    if missing:
        raise CircuitsError(f"{run.folder} did not score {len(missing)} of the gold run's edges (e.g. {missing[0]}); "
                            "runs and gold must be on the same model's graph")
    g = np.array([gold.scores[e] for e in edges], dtype=np.float64)
    r = np.array([run.scores[e] for e in edges], dtype=np.float64)
    cost = None if run.seconds is None or not gold.seconds else run.seconds / gold.seconds
    return Agreement(run=str(run.folder), method=run.method, edges=len(edges), pearson=pearson(r, g),
                     spearman=pearson(average_ranks(r), average_ranks(g)), sign=float((np.sign(r) == np.sign(g)).mean()),
                     top_1=top_overlap(g, r, TOP_FRACTIONS[0]), top_5=top_overlap(g, r, TOP_FRACTIONS[1]),
                     seconds=run.seconds, cost=cost)


def compare_runs(runs: Sequence[Union[str, Path]], gold: Union[str, Path]) -> List[Agreement]:
    """Each run's :class:`Agreement` with the gold run, after checking they share a model and a graph."""
    gold_run = read_run(gold)
    if not gold_run.scores:
        raise CircuitsError(f"the gold run {gold_run.folder} scored no edges; pass an edge-patching run")
    out = []
    for folder in runs:
        run = read_run(folder)
        if run.model != gold_run.model:
            raise CircuitsError(f"{run.folder} is a run on {run.model!r} and the gold run on {gold_run.model!r}; "
                                "compare runs of one model")
        out.append(agreement(run, gold_run))
    return out


def as_json(rows: Sequence[Agreement], gold: Union[str, Path]) -> str:
    return json.dumps({"gold": str(gold), "runs": [asdict(r) for r in rows]}, indent=2, allow_nan=False)


def table(rows: Sequence[Agreement]) -> str:
    """The agreement table as aligned text."""
    def num(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)

    head = f"{'method':<16} {'edges':>6} {'pearson':>8} {'spearman':>8} {'sign':>6} {'top1%':>6} {'top5%':>6} {'seconds':>8} {'cost':>7}  run"
    lines = [head]
    for r in rows:
        lines.append(f"{r.method:<16} {r.edges:>6} {num(r.pearson):>8} {num(r.spearman):>8} {r.sign:>6.3f} {r.top_1:>6.3f} "
                     f"{r.top_5:>6.3f} {num(r.seconds, '{:.1f}'):>8} {num(r.cost, '{:.3f}x'):>7}  {r.run}")
    return "\n".join(lines)
