"""``circuits benchmark`` as a library: every method on every task of one model, scored as MIB scores them.

:func:`run_benchmark` takes a loaded engine and its tokenizer and, for each task, builds the prompts once
(the same ``task.build``, held-out split and metric as ``discover``), then runs each method through
:func:`circuits.circuit.discover.discover` with ``discover``'s default selection (the smallest ``|score|`` circuit
with f >= 0.9, or ACDC's own circuit).  The methods of a task share the circuit evaluators: m(N),
m(empty), the corrupted runs (up to the reference cache) and every circuit two methods both measure are
computed once; with ``--metric kl``, so are the clean log-probabilities.  The figures of a cell are those
of the same ``discover`` run.

The folder ``out`` holds:

- ``benchmark.json``: the settings (model, tasks and what changes the figures); a folder that holds another
  benchmark is refused;
- ``cells/TASK/METHOD.json``: one finished cell each, written atomically when the cell is done; a rerun
  skips the cells found there (an interrupted benchmark resumes);
- ``runs/TASK/METHOD/``: each cell's run folder, as ``discover`` writes it (circuit, viewer, manifest);
- ``results.json``, ``results.md`` and ``TASK.png`` / ``TASK.svg`` (the methods' curves), rewritten after
  each cell (:mod:`circuits.graphs.bench`);
- with ``mib``, ``mib/METHOD/{task}_{model}/importances.json``: MIB's submission folders.

A planted model (``planted``, ``planted-deep``) has a known circuit: each cell adds the AUROC of ``|score|``
for telling its edges (a node method: its heads and MLPs) from the others, as MIB scores InterpBench.

Nothing here prints.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from circuits.atomic import write_atomic
from circuits.errors import CircuitsError
from circuits.methods.base import Progress, no_progress

SETTINGS_FILE = "benchmark.json"
CELLS = "cells"
RUNS = "runs"
MIB = "mib"
DEFAULT_HOLDOUT = 0.2
FORMAT = 1  # of benchmark.json and the cells

__all__ = ["BenchmarkSpec", "parse_names", "check_spec", "prepare_out", "run_benchmark", "cell_path", "load_cells",
           "node_auroc", "reference_circuit"]


@dataclass(frozen=True)
class BenchmarkSpec:
    """What a benchmark runs.  ``holdout`` None: 0.2 of the prompts when that is at least one prompt (as
    ``discover``).  ``batch_size`` and ``device`` change how, not what, so a folder may be resumed with others."""

    model: str
    tasks: Tuple[str, ...]
    methods: Tuple[str, ...]
    n: int = 100
    seed: int = 0
    holdout: Optional[float] = None
    ablation: str = "corrupted"
    metric: str = "task"
    bootstrap: int = 0
    max_tests: int = 0
    dtype: str = "float32"
    batch_size: int = 0
    device: str = "cpu"

    def identity(self) -> Dict[str, Any]:
        """The settings a folder's cells were measured with (methods left out: a rerun may add or drop some)."""
        out = asdict(self)
        for key in ("methods", "batch_size", "device"):
            out.pop(key)
        out["tasks"] = list(self.tasks)
        return {"format": FORMAT, **out}


def parse_names(text: str, kind: str) -> Tuple[str, ...]:
    """``"eap,eap-ig"`` -> ``("eap", "eap-ig")`` (blanks dropped, first occurrence kept), each checked against the
    registry (an unknown name is a one-line error that lists the known ones)."""
    from circuits.registry import get_method, get_task

    names = tuple(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))
    if not names:
        raise CircuitsError(f"--{kind}s is empty: name at least one {kind}, e.g. --{kind}s " +
                            ("greater-than,ioi" if kind == "task" else "eap,eap-ig"))
    lookup = get_task if kind == "task" else get_method
    for name in names:
        lookup(name)
    return names


def check_spec(spec: BenchmarkSpec) -> None:
    """Refuse, before the model loads, what cannot run."""
    from circuits.engine.ablation import ABLATIONS
    from circuits.circuit.discover import holdout_count
    from circuits.engine.memory import parse_dtype
    from circuits.methods.metrics import check_metric
    from circuits.registry import get_method, get_task
    from circuits.circuit.stability import check_bootstrap

    for name in spec.tasks:
        get_task(name)
    for name in spec.methods:
        get_method(name)
    if spec.n < 1:
        raise CircuitsError(f"--n must be at least 1 (got {spec.n})")
    if spec.holdout is not None:
        holdout_count(spec.holdout, spec.n)
    if spec.ablation not in ABLATIONS:
        raise CircuitsError(f"--ablation must be one of {', '.join(ABLATIONS)} (got {spec.ablation!r})")
    check_metric(spec.metric)
    check_bootstrap(spec.bootstrap)
    parse_dtype(spec.dtype)
    if spec.max_tests < 0:
        raise CircuitsError(f"--max-tests must be 0 (no limit) or more (got {spec.max_tests})")


def prepare_out(out: Path, spec: BenchmarkSpec) -> bool:
    """Make ``out`` this benchmark's folder: new (True), or one of the same settings to resume (False).

    A file, a folder of other files, or a folder holding another benchmark is a one-line error."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CircuitsError(f"--out {out} is a file; pass a folder for the benchmark")
    settings = out / SETTINGS_FILE
    if settings.is_file():
        try:
            found = json.loads(settings.read_text())
        except (OSError, ValueError):
            found = None
        want = spec.identity()
        if not isinstance(found, dict) or found.get("settings") != want:
            old = found.get("settings") if isinstance(found, dict) else None
            diff = sorted(k for k in want if not isinstance(old, dict) or old.get(k) != want[k])
            raise CircuitsError(f"--out {out} holds another benchmark (its {', '.join(diff) or 'settings'} differ); "
                                "choose a new folder or rerun with the same settings to resume it")
        return False
    if out.is_dir() and any(out.iterdir()):
        raise CircuitsError(f"--out {out} is not empty and holds no benchmark; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(settings, json.dumps({"settings": spec.identity()}, indent=2) + "\n")
    return True


def cell_path(out: Path, task: str, method: str) -> Path:
    return Path(out) / CELLS / task / f"{method}.json"


def load_cells(out: Path, spec: BenchmarkSpec) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """The finished cells of the spec's tasks and methods found in ``out`` (an unreadable cell is not finished)."""
    found = {}
    for task in spec.tasks:
        for method in spec.methods:
            path = cell_path(out, task, method)
            try:
                cell = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(cell, dict) and cell.get("task") == task and cell.get("method") == method:
                found[(task, method)] = cell
    return found


def reference_circuit(model: str) -> Optional[Dict[str, Any]]:
    """The known circuit of a planted model spec (its ``edges`` and ``nodes``), else None."""
    from circuits.models.planted import VARIANTS, ground_truth

    return ground_truth(model) if model in VARIANTS else None


def node_auroc(scores: Mapping[str, float], positives: set) -> Optional[float]:
    """AUROC of ``|score|`` for telling the ``positives`` (heads and MLPs) from the other scored nodes: the
    fraction of (positive, negative) pairs ranked right, ties counting half (None without both kinds)."""
    pos = [abs(float(v)) for k, v in scores.items() if k in positives]
    neg = [abs(float(v)) for k, v in scores.items() if k not in positives]
    pos += [-math.inf] * len(set(positives) - set(scores))
    if not pos or not neg:
        return None
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def _options(spec: BenchmarkSpec, method_obj):
    """The shared settings, and ``--max-tests`` for the methods that declare it (acdc)."""
    from circuits.methods.base import MethodOptions, declared_options

    own = {o.name for o in declared_options(method_obj)}
    return MethodOptions(ablation=spec.ablation, batch_size=spec.batch_size,
                         params={"max_tests": spec.max_tests} if "max_tests" in own else {})


def _selection(method_obj):
    """``discover``'s default: ACDC keeps its own circuit, every other method the smallest f >= 0.9 circuit."""
    from circuits.circuit.discover import SelectionSpec

    return SelectionSpec("acdc", 0.0) if getattr(method_obj, "default_selection", None) == "acdc" else SelectionSpec()


def _auroc(result, model: str) -> Optional[float]:
    truth = reference_circuit(model)
    if truth is None:
        return None
    scores = result.scores
    if result.granularity == "node":
        nodes = {n for n in truth["nodes"] if n not in ("input", "logits")}
        return node_auroc({k: v for k, v in scores.node_scores.items() if k not in ("input", "logits")}, nodes)
    from circuits.graphs.compare import auroc

    return auroc(scores.edge_dict(), set(truth["edges"]))


def _cell(task: str, method: str, result, *, seconds: float, peak: Optional[int], auroc: Optional[float],
          run_folder: str) -> Dict[str, Any]:
    from circuits.circuit.ranking import kept_nodes

    sel, held, curves = result.selection, result.heldout, result.curves
    nodes = int(kept_nodes(sel.keep_mask, result.scores.graph)[1:].sum()) if sel.granularity == "node" else None
    return {
        "task": task, "method": method, "granularity": sel.granularity,
        "cpr": result.cpr, "cmd": result.cmd,
        "faithfulness": result.faithfulness.f,
        "faithfulness_heldout": None if held is None else held.faithfulness.f,
        "cpr_heldout": None if held is None or held.curves is None else held.curves.cpr,
        "cmd_heldout": None if held is None or held.curves is None else held.curves.cmd,
        "n_heldout": 0 if held is None else held.n,
        "edges_kept": sel.edges_kept, "edges_total": result.edges_total, "nodes_kept": nodes,
        "selection": {"mode": sel.mode, "value": sel.value, "ranking": sel.ranking, "reached": sel.reached},
        "complete": result.complete,
        "seconds": seconds, "peak_memory_bytes": peak,
        "stability": None if result.stability is None else result.stability.manifest(),
        "auroc": auroc,
        "curve_signed": [] if curves is None else curves.signed.records(),
        "curve_abs": [] if curves is None else curves.abs.records(),
        "run": run_folder,
    }


@dataclass
class _TaskData:
    """One task's prompts, split and metric, and the evaluators its methods share (built when first needed)."""

    task: Any
    dataset: Any
    scored: Any
    heldout: Any
    holdout: float
    metric: Callable
    evaluators: Optional[Tuple[Any, Any]] = None


def _task_data(engine, tokenizer, spec: BenchmarkSpec, name: str) -> _TaskData:
    from circuits.circuit.discover import split_holdout
    from circuits.methods.metrics import build_metric
    from circuits.registry import get_task

    task = get_task(name)
    dataset = task.build(tokenizer, n=spec.n, seed=spec.seed)
    holdout = spec.holdout
    if holdout is None:
        holdout = DEFAULT_HOLDOUT if DEFAULT_HOLDOUT * len(dataset) >= 1 else 0.0
    scored, heldout = split_holdout(dataset, holdout, seed=spec.seed)
    metric = build_metric(spec.metric, task, engine, dataset, batch_size=spec.batch_size)
    return _TaskData(task=task, dataset=dataset, scored=scored, heldout=heldout, holdout=holdout, metric=metric)


def _evaluators(engine, spec: BenchmarkSpec, data: _TaskData):
    from circuits.circuit.faithfulness import CircuitEvaluator

    if data.evaluators is None:
        main = CircuitEvaluator(engine, data.scored, data.metric, ablation=spec.ablation, batch_size=spec.batch_size)
        held = None if data.heldout is None else CircuitEvaluator(engine, data.heldout, data.metric,
                                                                  ablation=spec.ablation, batch_size=spec.batch_size)
        data.evaluators = (main, held)
    return data.evaluators


def run_cell(engine, spec: BenchmarkSpec, data: _TaskData, task: str, method: str, out: Path, *,
             progress: Optional[Progress] = None) -> Dict[str, Any]:
    """Run one (task, method) through ``discover``, write its run folder, then its cell (atomically, last)."""
    from circuits.circuit.discover import discover
    from circuits.engine.memory import PeakMeter
    from circuits.registry import get_method
    from circuits.circuit.run_folder import write_run

    method_obj = get_method(method)
    main, held = _evaluators(engine, spec, data)
    meter = PeakMeter.try_start(spec.device)
    t = time.perf_counter()
    result = discover(engine, data.scored, data.metric, method_obj, _options(spec, method_obj), _selection(method_obj),
                      heldout=data.heldout, progress=progress, bootstrap=spec.bootstrap, seed=spec.seed,
                      evaluator=main, heldout_evaluator=held)
    seconds = time.perf_counter() - t
    peak = None if meter is None else meter.growth()
    folder = Path(out) / RUNS / task / method
    run = {"command": ["circuits", "benchmark"], "task": task, "model": spec.model, "method": method,
           "metric": spec.metric, "n": len(data.dataset), "n_scored": len(data.scored), "holdout": data.holdout,
           "data": None, "seed": spec.seed, "device": spec.device, "dtype": spec.dtype, "batch_size": spec.batch_size,
           "batch_size_auto": None, "benchmark": str(Path(out))}
    d_model = getattr(getattr(engine, "w", None), "d_model", None)
    if isinstance(d_model, int):
        run["d_model"] = d_model
    write_run(folder, result, run, force=True)
    cell = _cell(task, method, result, seconds=seconds, peak=peak, auroc=_auroc(result, spec.model),
                 run_folder=str(folder.relative_to(out)))
    from circuits.graphs.build import jsonable

    path = cell_path(out, task, method)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(jsonable(cell), indent=2, allow_nan=False) + "\n")
    return cell


def run_benchmark(engine, tokenizer, spec: BenchmarkSpec, out, *, mib: bool = False,
                  progress: Optional[Progress] = None,
                  on_cell: Optional[Callable[[Dict[str, Any], bool], None]] = None) -> Dict[str, Any]:
    """Run (or resume) the benchmark in ``out`` (see the module docstring); returns ``results.json``'s content.

    ``on_cell(cell, resumed)`` is called for each cell as it is found or finished; ``progress`` receives the
    running cell's progress (its message prefixed with ``task / method``)."""
    from circuits.graphs.bench import write_results

    out = Path(out)
    check_spec(spec)
    prepare_out(out, spec)
    progress = progress or no_progress
    cells = load_cells(out, spec)
    for key in [(t, m) for t in spec.tasks for m in spec.methods if (t, m) in cells]:
        if on_cell:
            on_cell(cells[key], True)
    for task in spec.tasks:
        todo = [m for m in spec.methods if (task, m) not in cells]
        if not todo:
            continue
        data = _task_data(engine, tokenizer, spec, task)
        for method in todo:
            def cell_progress(done: int, total: int, message: str, _label=f"{task} / {method}") -> None:
                progress(done, total, f"{_label}: {message}" if message else _label)

            cells[(task, method)] = run_cell(engine, spec, data, task, method, out, progress=cell_progress)
            if on_cell:
                on_cell(cells[(task, method)], False)
            write_results(out, _results(spec, cells))
        data.evaluators = None
    results = _results(spec, cells)
    write_results(out, results)
    if mib:
        _write_mib(out, spec, cells)
    return results


def _results(spec: BenchmarkSpec, cells: Mapping[Tuple[str, str], Dict[str, Any]]) -> Dict[str, Any]:
    return {"settings": {**spec.identity(), "methods": list(spec.methods)},
            "reference": spec.model if reference_circuit(spec.model) is not None else None,
            "cells": [cells[(t, m)] for t in spec.tasks for m in spec.methods if (t, m) in cells],
            "missing": [f"{t}/{m}" for t in spec.tasks for m in spec.methods if (t, m) not in cells]}


def _write_mib(out: Path, spec: BenchmarkSpec, cells: Mapping[Tuple[str, str], Dict[str, Any]]) -> List[Path]:
    """MIB's submission folders, ``mib/METHOD/{task}_{model}/importances.json``, from the cells' run folders."""
    from circuits.graphs.build import load_circuit
    from circuits.graphs.compare import SCORES_FILE, load_scores
    from circuits.graphs.interop import write_mib

    written = []
    for (task, method), cell in cells.items():
        run = out / cell["run"]
        G = load_circuit(run)
        written.append(write_mib(G, out / MIB / method, scores=load_scores(run / SCORES_FILE)))
    return written
