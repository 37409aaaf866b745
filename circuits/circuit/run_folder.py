"""A discovery run's folder: every file written atomically, ``manifest.json`` last.

Files: ``circuit.json`` (node-link graph of the kept edges), ``circuit.dot``, ``circuit.svg``
(drawn by :mod:`circuits.graphs.svg`, no GraphViz), ``circuit.html`` (the interactive viewer),
``scores.tsv`` (every edge's score), ``report.md``
(with ``faithfulness_curve.png``) and ``manifest.json`` (the run's settings, versions,
timings and results).  Nothing here prints.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from circuits.atomic import write_atomic
from circuits.errors import CircuitsError

MANIFEST_FILE = "manifest.json"
RUN_FILES = ("circuit.json", "circuit.dot", "circuit.svg", "circuit.html", "scores.tsv", "report.md", "faithfulness_curve.png", MANIFEST_FILE)
PACKAGES = ("circuits", "torch", "transformer_lens", "transformers", "networkx")

__all__ = ["MANIFEST_FILE", "RUN_FILES", "WrittenRun", "check_out_dir", "package_versions", "build_manifest",
           "circuit_graph", "write_run"]


@dataclass(frozen=True)
class WrittenRun:
    folder: Path
    files: Tuple[Path, ...]
    svg: bool  # always True: circuit.svg no longer needs GraphViz
    manifest: Mapping[str, Any]


def check_out_dir(path: Union[str, Path], force: bool) -> Path:
    """Refuse a folder that exists and is not empty unless ``force``; refuse a path that is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CircuitsError(f"--out {path} is a file; pass a folder for the run's files")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise CircuitsError(f"--out {path} is not empty; pass --force to write into it or choose a new folder")
    return path


def package_versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {}
    for name in PACKAGES:
        try:
            out[name] = version(name.replace("_", "-")) if name != "circuits" else _own_version()
        except PackageNotFoundError:
            out[name] = None
    return out


def _own_version() -> str:
    from circuits import __version__

    return __version__


def build_manifest(result, run: Mapping[str, Any], timings: Optional[Mapping[str, float]] = None) -> Dict[str, Any]:
    """The manifest of a :class:`circuits.circuit.discover.DiscoveryResult`; ``run`` adds command, task, model, method, n, seed..."""
    sel, faith, curves = result.selection, result.faithfulness, result.curves
    opts = result.options
    manifest: Dict[str, Any] = {
        "faithfulness": faith.f,
        "edges_kept": sel.edges_kept,
        "edges_total": result.edges_total,
        "granularity": sel.granularity,
        "cpr": None if curves is None else curves.cpr,
        "cmd": None if curves is None else curves.cmd,
        **dict(run),
        "ablation": opts.ablation,
        "metric": run.get("metric", "task"),
        "options": {"neurons": list(opts.neurons), "top_neurons": opts.top_neurons, "batch_size": opts.batch_size,
                    **dict(opts.params)},
        "neurons_kept": _neuron_lists(sel),
        "metric_full": faith.m_full,
        "metric_empty": faith.m_empty,
        "metric_circuit": faith.m_circuit,
        **_heldout_fields(getattr(result, "heldout", None)),
        "selection": {"mode": sel.mode, "value": sel.value, "ranking": sel.ranking, "k": sel.k,
                      "edges_kept": sel.edges_kept, "evaluations": sel.evaluations, "reached": sel.reached,
                      "verified": _verified(sel)},
        "forward_passes": result.forward_passes,
        **_budget(result.scores.info),
        "circuit_evaluations": result.circuit_evaluations,
        "stability": None if getattr(result, "stability", None) is None else result.stability.manifest(),
        "method_info": dict(result.scores.info),
        "curve_signed": [] if curves is None else curves.signed.records(),
        "curve_abs": [] if curves is None else curves.abs.records(),
        "timings": {**dict(timings or {}), **dict(result.timings)},
        "versions": package_versions(),
    }
    scored = getattr(result.scores, "scored", None)
    if scored is not None:  # a sampled method: the edges it did not score are unscored, not 0
        n_scored = int(scored.sum())
        manifest["edges_scored"], manifest["edges_unscored"] = n_scored, int(result.edges_total) - n_scored
    info = result.scores.info
    if "complete" in info:  # a search that can stop early (ACDC's --max-tests)
        manifest["complete"] = bool(info["complete"])
    if result.scores.method == "acdc":
        manifest["acdc"] = {k: info.get(k) for k in ("tau", "order", "edge_tests", "passes", "max_tests", "complete")}
    return manifest


def _heldout_fields(held) -> Dict[str, Any]:
    """``n_heldout`` (0 when nothing was held out) and the circuit's figures on the held-out prompts."""
    if held is None:
        return {"n_heldout": 0, "faithfulness_heldout": None, "cpr_heldout": None, "cmd_heldout": None}
    curves = held.curves
    return {"n_heldout": held.n, "faithfulness_heldout": held.faithfulness.f,
            "cpr_heldout": None if curves is None else curves.cpr, "cmd_heldout": None if curves is None else curves.cmd,
            "metric_full_heldout": held.faithfulness.m_full, "metric_empty_heldout": held.faithfulness.m_empty,
            "metric_circuit_heldout": held.faithfulness.m_circuit}


def _budget(info: Mapping[str, Any]) -> Dict[str, Any]:
    """``complete`` and the budget used, for a method whose search can stop early (empty otherwise)."""
    if not isinstance(info, Mapping) or "complete" not in info:
        return {}
    out: Dict[str, Any] = {"complete": bool(info["complete"])}
    for key in ("passes_used", "max_passes"):
        if key in info:
            out[key] = info[key]
    return out


def _verified(selection) -> Optional[Dict[str, Any]]:
    """What verification did (:class:`circuits.circuit.select.Verification`), or None when the circuit was not verified."""
    done = getattr(selection, "verified", None)
    return None if done is None else {**asdict(done), "removed": list(done.removed)}


def _neuron_lists(selection) -> Dict[str, list]:
    """``{"m10": [kept neuron indices]}`` of the selection's reduced MLPs (empty when none)."""
    from circuits.circuit.neurons import neuron_lists

    return neuron_lists(getattr(selection, "neurons", None))


def _with_unscored(scores) -> Dict[str, Optional[float]]:
    """Every valid edge's score, None for the edges ``scores.scored`` leaves out (written as unscored)."""
    if getattr(scores, "scored", None) is None:
        return scores.edge_dict()
    g, mask = scores.graph, scores.scored
    return {g.edge_name(s, r): (float(scores.edge_scores[s, r]) if bool(mask[s, r]) else None) for s, r in g.edges()}


def circuit_graph(result, metadata: Mapping[str, Any]):
    """The circuit's networkx graph: kept edges with scores, node scores and top neurons, and ``metadata``."""
    from circuits.graphs.build import add_frequencies, build_graph

    scores = result.scores
    kept = result.kept_edges()
    top = {k: list(v) for k, v in scores.neuron_scores.items()} or None
    G = build_graph(kept, node_scores=dict(scores.node_scores) or None, top_neurons=top, metadata=metadata,
                    neurons=_neuron_lists(result.selection) or None)
    stability = getattr(result, "stability", None)
    if stability is not None:
        add_frequencies(G, stability.frequency)
    return G


def write_run(folder: Union[str, Path], result, run: Mapping[str, Any], *,
              timings: Optional[Mapping[str, float]] = None, force: bool = False) -> WrittenRun:
    """Write the run folder for ``result`` (a :class:`DiscoveryResult`); ``run`` describes the run
    (command, task, model, method, n, seed, device...) and ``timings`` adds the caller's steps
    (loading, dataset).  Refuses a non-empty folder unless ``force``; with ``force``, stale run
    files this run does not write (an old SVG or curve) are removed."""
    from circuits.graphs.build import CIRCUIT_FILE, jsonable, write_json
    from circuits.graphs.compare import SCORES_FILE, write_scores
    from circuits.graphs.dot import to_dot
    from circuits.graphs.svg import to_svg
    from circuits.graphs.viewer import HTML_FILE, viewer_html
    from circuits.graphs.report import CURVE_FILE, write_report

    folder = check_out_dir(folder, force)
    folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    manifest = build_manifest(result, run, timings)
    sel = result.selection
    metadata = {k: manifest.get(k) for k in ("task", "model", "method", "granularity", "metric", "n", "seed", "ablation",
                                             "faithfulness", "edges_kept", "edges_total", "cpr", "cmd", "data", "holdout",
                                             "n_heldout", "faithfulness_heldout", "stability")}
    metadata.update(selection=sel.mode, ranking=sel.ranking, k=sel.k)
    shape = getattr(result.scores, "graph", None)
    for key in ("n_layers", "n_heads"):
        if isinstance(getattr(shape, key, None), int):
            metadata[key] = getattr(shape, key)
    if isinstance(run.get("d_model"), int):
        metadata["d_model"] = run["d_model"]
    G = circuit_graph(result, metadata)

    values = _with_unscored(result.scores)
    written = [write_scores(values, folder / SCORES_FILE)]
    all_scores = {k: v for k, v in values.items() if v is not None}
    written.append(write_json(G, folder / CIRCUIT_FILE))
    written.append(write_atomic(folder / "circuit.dot", to_dot(G)))
    written.append(write_atomic(folder / "circuit.svg", to_svg(G)))
    written.append(write_atomic(folder / HTML_FILE, viewer_html(G, scores=all_scores, manifest=jsonable(manifest))))
    curves = None if result.curves is None else {"signed": result.curves.signed.pairs(), "abs": result.curves.abs.pairs()}
    written.append(write_report(folder, G=G, manifest=manifest, curves=curves, top_components=result.top_components()))
    if curves and (folder / CURVE_FILE).is_file():
        written.append(folder / CURVE_FILE)
    manifest["timings"]["write"] = time.perf_counter() - t
    text = json.dumps(jsonable(manifest), indent=2, allow_nan=False) + "\n"
    written.append(write_atomic(folder / MANIFEST_FILE, text))
    for name in RUN_FILES:  # leftovers of an earlier run in a --force'd folder
        stale = folder / name
        if stale not in written and stale.is_file():
            stale.unlink()
    return WrittenRun(folder=folder, files=tuple(written), svg=True, manifest=manifest)
