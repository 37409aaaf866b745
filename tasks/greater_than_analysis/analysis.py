"""The greater-than analysis: compute every table (``analyze``), then write pictures, CSVs and report.html (``write``).

What is computed (see each module for the details and choices):

1. year probabilities p(YY' | YY) of the full model and of the circuit alone
   (:mod:`circuits.tasks.greater_than_analysis.heatmaps`, :mod:`circuits.analysis.forward`);
2. PD and CS by start year;
3. mean attention from the answer position for the circuit's heads, or the top heads by
   activation patching (:mod:`circuits.tasks.greater_than_analysis.attention`);
4. the chosen MLPs' logit lens and direct / indirect effects (:mod:`circuits.tasks.greater_than_analysis.mlps`);
5. the top neurons of chosen MLPs (:mod:`circuits.tasks.greater_than_analysis.neurons`).

Nothing here prints; long steps report through ``progress(done, total, message)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from circuits import names
from circuits.tasks.greater_than_analysis import attention as attn_mod
from circuits.analysis import html
from circuits.tasks.greater_than_analysis import heatmaps, mlps, neurons
from circuits.analysis.circuit import Circuit
from circuits.analysis.forward import EngineForward
from circuits.analysis.runs import collect_runs
from circuits.atomic import write_atomic
from circuits.errors import CircuitsError
from circuits.timing import Timer
from circuits.methods.base import Progress, no_progress

__all__ = ["Analysis", "analyze", "write", "default_neuron_layers", "default_mlps", "REPORT_FILE", "SUMMARY_FILE",
           "TOP_HEADS", "CANDIDATES"]

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
TOP_HEADS = 6
CANDIDATES = 100  # neurons per MLP scored exactly after attribution screening (None: all)


@dataclass
class Analysis:
    """Everything the report shows.  ``full``/``circuit``: year results (circuit None without one).
    ``heads`` with ``head_scores`` (activation-patching node scores when the heads were chosen by
    them, else empty); ``attention`` [heads, seq] with position ``labels`` and YY ``marks``;
    ``lens``: MLP layer -> [100, columns] mean direct logits per YY; ``effects``: direct/indirect;
    ``neurons``: per chosen MLP.  ``settings`` and ``timings`` (seconds per step) for the record."""

    model: str
    task: str
    n: int
    seed: int
    mode: str
    full: heatmaps.YearResult
    circuit: Optional[heatmaps.YearResult]
    circuit_info: Optional[Circuit]
    heads: List[Tuple[int, int]]
    head_scores: Dict[str, float]
    attention: np.ndarray
    labels: List[str]
    marks: List[int]
    mlp_layers: List[int]
    lens: Dict[int, np.ndarray]
    lens_cols: List[str]
    lens_xlabel: str
    effects: List[mlps.MlpEffect]
    neurons: List[neurons.NeuronReport]
    settings: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)


def default_neuron_layers(n_layers: int) -> Tuple[int, ...]:
    """``m{L-2}`` ("MLP 10" of a 12-layer model); ``m0`` for a one-layer model."""
    return (max(0, n_layers - 2),)


def default_mlps(n_layers: int, circuit: Optional[Circuit]) -> List[int]:
    """The circuit's MLPs, or the last four."""
    if circuit is not None:
        return list(circuit.mlps)
    return list(range(max(0, n_layers - 4), n_layers))


def _stage(progress: Progress, name: str) -> Progress:
    return lambda done, total, message: progress(done, total, f"{name}: {message}" if message else name)


def analyze(engine, dataset, task, *, model: str = "", seed: int = 0, circuit: Optional[Circuit] = None,
            forward: Optional[Callable] = None, tokenizer=None, neuron_layers: Optional[Sequence[int]] = None,
            top_k: int = 10, candidates: Optional[int] = CANDIDATES, n_top_heads: int = TOP_HEADS,
            mlp_layers: Optional[Sequence[int]] = None, batch_size: int = 32,
            progress: Optional[Progress] = None) -> Analysis:
    """Run every analysis of the greater-than task on ``dataset``.

    Args:
        engine: the model's ``GraphEngine``.  task: a ``GreaterThan``.  circuit: a :class:`Circuit` or None.
        forward: the full model's ``tokens -> logits`` for the headline numbers (the CLI passes the
            TransformerBridge's, as ``circuits evaluate`` uses); default: the engine's.
        tokenizer: for the attention plots' position labels (token ids without it).
        neuron_layers: MLP layers whose neurons are scored (default ``m{L-2}``).  top_k: neurons per MLP.
        candidates: neurons scored exactly per MLP, the strongest by attribution patching (None: every
            neuron, exactly; scoring all costs one restarted pass per neuron and prompt).
        n_top_heads: heads shown without a circuit (chosen by activation patching).
        mlp_layers: MLPs for the logit lens and direct/indirect effects (default :func:`default_mlps`).
        batch_size: prompts per engine pass (0: all at once).
    """
    progress = progress or no_progress
    w = engine.w
    neuron_layers, top_k = _checked(w, neuron_layers, top_k)
    mlp_layers = list(default_mlps(w.n_layers, circuit) if mlp_layers is None else mlp_layers)
    timer = Timer()
    # 1-2: year probabilities, PD and CS
    full_forward = forward or EngineForward(engine, dataset, progress=_stage(progress, "full model"))
    full = timer("year_probabilities_model", lambda: _year_result(
        task, _counted(full_forward, len(dataset), _stage(progress, "full model")), dataset))
    circ = None
    if circuit is not None:
        circuit_forward = EngineForward(engine, dataset, circuit.keep, progress=_stage(progress, "circuit"))
        circ = timer("year_probabilities_circuit", lambda: _year_result(
            task, circuit_forward, dataset, batch_size=batch_size or len(dataset)))
    # one clean and one corrupted pass, shared by the analyses below
    runs = timer("clean_and_corrupted_runs", lambda: collect_runs(
        engine, dataset, mlp_layers=mlp_layers, hidden_layers=neuron_layers, batch_size=batch_size,
        progress=_stage(progress, "runs")))
    # 3: heads and their attention
    heads, head_scores = _heads(engine, dataset, task, circuit, n_top_heads, batch_size, progress, timer)
    attention = timer("attention", lambda: attn_mod.mean_attention(engine, dataset, heads, batch_size=batch_size,
                                                                      runs=runs))
    labels = attn_mod.position_labels(tokenizer, dataset) if tokenizer is not None else \
        [str(p) for p in range(dataset.clean.shape[1])]
    # 4: MLPs
    ids, cols, xlabel = mlps.answer_columns(dataset)
    yy = heatmaps.start_years(dataset)
    lens_raw = timer("logit_lens", lambda: mlps.logit_lens(engine, dataset, mlp_layers, batch_size=batch_size,
                                                              runs=runs))
    effects = timer("mlp_effects", lambda: mlps.direct_indirect(engine, dataset, task.metric, mlp_layers,
                                                                 batch_size=batch_size, runs=runs,
                                                                 progress=_stage(progress, "MLP effects")))
    # 5: neurons
    reports = timer("neurons", lambda: [_neuron_report(engine, dataset, task, layer, top_k, candidates, ids, batch_size,
                                                       runs, progress) for layer in neuron_layers])
    settings = {"neuron_layers": [f"m{l}" for l in neuron_layers], "top_k": top_k, "candidates": candidates,
                "mlps": [f"m{l}" for l in mlp_layers], "batch_size": batch_size, "d_mlp": w.d_mlp,
                "heads_from": "circuit" if circuit is not None else f"top {n_top_heads} by activation patching"}
    return Analysis(model=model, task=getattr(task, "name", "greater-than"), n=len(dataset), seed=seed,
                    mode=dataset.info.get("mode", "token"), full=full, circuit=circ, circuit_info=circuit, heads=heads,
                    head_scores=head_scores, attention=attention, labels=labels, marks=attn_mod.yy_positions(dataset),
                    mlp_layers=mlp_layers,
                    lens={layer: heatmaps.by_start_year(values, yy) for layer, values in lens_raw.items()},
                    lens_cols=cols, lens_xlabel=xlabel, effects=effects, neurons=reports, settings=settings,
                    timings=timer.timings)


def _checked(w, neuron_layers: Optional[Sequence[int]], top_k: int):
    """The neuron layers (default ``m{L-2}``) and ``top_k`` (at most the MLP's width), checked."""
    L = w.n_layers
    layers = list(default_neuron_layers(L) if neuron_layers is None else neuron_layers)
    for layer in layers:
        if not 0 <= layer < L:
            raise CircuitsError(f"--neurons m{layer}: the model has MLPs m0..m{L - 1}")
    if top_k < 1:
        raise CircuitsError(f"--top-k must be at least 1 (got {top_k})")
    return layers, min(top_k, w.d_mlp)


def _heads(engine, dataset, task, circuit, n_top_heads: int, batch_size: int, progress: Progress, timer: Timer):
    """The heads to show (the circuit's, or the strongest by activation patching) and their patching scores."""
    if circuit is not None:
        return list(circuit.heads), {}
    scores = timer("activation_patching", lambda: _head_scores(engine, dataset, task, batch_size,
                                                                _stage(progress, "activation patching")))
    ranked = sorted(scores.items(), key=lambda kv: -abs(kv[1]))[:n_top_heads]
    return sorted((names.parse_node(k).layer, names.parse_node(k).index) for k, _ in ranked), scores


def _neuron_report(engine, dataset, task, layer: int, top_k: int, candidates: Optional[int], ids, batch_size: int,
                   runs, progress: Progress) -> "neurons.NeuronReport":
    """One MLP's top neurons, their joint effect and their output directions."""
    d_mlp = engine.w.d_mlp
    top = neurons.top_neurons(engine, dataset, task.metric, layer, top_k, candidates=candidates,
                              batch_size=batch_size, runs=runs, progress=_stage(progress, "neurons"))
    chosen = [i for i, _ in top]
    joint = neurons.joint_effect(engine, dataset, task.metric, layer, chosen, batch_size=batch_size, runs=runs)
    scored = d_mlp if candidates is None or candidates >= d_mlp else max(candidates, top_k)
    return neurons.NeuronReport(layer=layer, top=tuple(top), joint=joint, scored=scored,
                                directions=neurons.output_directions(engine, layer, chosen, ids))


def _year_result(task, forward: Callable, dataset, **kwargs) -> heatmaps.YearResult:
    """Year probabilities with the task's own PD and CS (``year_table``: the exact two-digit PD with digit tokens)."""
    probs, pd, cs = task.year_table(forward, dataset, **kwargs)
    return heatmaps.year_result(probs, dataset, pd=pd, cs=cs)


def _counted(forward: Callable, total: int, progress: Progress) -> Callable:
    """``forward`` reporting the prompts it has seen (teacher-forced calls, one token longer, are not counted)."""
    if isinstance(forward, EngineForward):
        return forward
    state = {"done": 0, "seq": None}

    def wrapped(tokens):
        if state["seq"] is None:
            state["seq"] = tokens.shape[1]
        out = forward(tokens)
        if tokens.shape[1] == state["seq"]:
            state["done"] = min(total, state["done"] + tokens.shape[0])
            progress(state["done"], total, "year probabilities")
        return out

    return wrapped


def _head_scores(engine, dataset, task, batch_size: int, progress: Progress) -> Dict[str, float]:
    """Activation-patching node scores of every head."""
    from circuits.methods.activation_patching import ActivationPatching
    from circuits.methods.base import MethodOptions

    scores = ActivationPatching().score(engine, dataset, task.metric, MethodOptions(batch_size=batch_size),
                                        progress=progress)
    return {k: v for k, v in scores.node_scores.items() if names.parse_node(k).kind == "head"}


# ---------------------------------------------------------------------------------------------- writing
def _headline(a: Analysis) -> List[str]:
    lines = [f"Full model: mean PD {a.full.pd_mean:+.4f}, mean CS {a.full.cs_mean:+.4f} "
             f"({a.n} prompts, seed {a.seed}, model {a.model})."]
    if a.circuit is not None:
        lines.append(f"Circuit alone ({a.circuit_info.n_edges} edges): mean PD {a.circuit.pd_mean:+.4f}, "
                     f"mean CS {a.circuit.cs_mean:+.4f}.")
    return lines


def summary(a: Analysis) -> Dict[str, Any]:
    """The headline numbers and choices as a JSON-ready dict (``summary.json``)."""
    def stats(r: heatmaps.YearResult) -> Dict[str, float]:
        return {"pd_mean": r.pd_mean, "pd_std": r.pd_std, "cs_mean": r.cs_mean, "cs_std": r.cs_std}

    out: Dict[str, Any] = {
        "task": a.task, "model": a.model, "n": a.n, "seed": a.seed, "mode": a.mode,
        "model_metrics": stats(a.full),
        "circuit_metrics": stats(a.circuit) if a.circuit is not None else None,
        "circuit": None if a.circuit_info is None else {
            "source": a.circuit_info.source, "edges": a.circuit_info.n_edges,
            "heads": [names.format_node(names.head(l, h)) for l, h in a.circuit_info.heads],
            "mlps": [f"m{l}" for l in a.circuit_info.mlps]},
        "heads": [names.format_node(names.head(l, h)) for l, h in a.heads],
        "head_scores": a.head_scores,
        "mlp_effects": [{"mlp": e.name, "total": e.total, "direct": e.direct, "indirect": e.indirect} for e in a.effects],
        "neurons": [{"mlp": f"m{r.layer}", "top": [[i, e] for i, e in r.top], "sum_single": r.sum_single,
                     "joint": r.joint, "scored_exactly": r.scored} for r in a.neurons],
        "settings": a.settings,
        "timings_s": a.timings,
    }
    return out


def _short(model: str) -> str:
    """The model's name for titles: a file or folder's last part, a hub name as given."""
    return Path(model).name if ("/" in model and Path(model).exists()) else model


def write(out_dir: Union[str, Path], a: Analysis) -> List[Path]:
    """Write every picture, table, ``summary.json`` and (last) ``report.html`` into ``out_dir``; returns the paths."""
    from circuits.graphs.build import jsonable

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: List[Path] = []
    sections: List[html.Section] = []
    for part in (_years, _pd_cs, _attention, _mlps, _neurons):
        section, written = part(a, out)
        sections.append(section)
        files += written
    files.append(write_atomic(out / SUMMARY_FILE, json.dumps(jsonable(summary(a)), indent=2) + "\n"))
    text = html.render(f"Greater-than analysis: {_short(a.model)}", _headline(a), _facts(a), sections)
    files.append(write_atomic(out / REPORT_FILE, text))
    return files


def _facts(a: Analysis) -> List[Tuple[str, Any]]:
    facts: List[Tuple[str, Any]] = [("task", a.task), ("model", a.model), ("prompts (n)", a.n), ("seed", a.seed),
                                    ("year tokens", "one token per YY" if a.mode == "token" else "digit by digit"),
                                    ("model mean PD", a.full.pd_mean), ("model mean CS", a.full.cs_mean)]
    if a.circuit is not None:
        facts += [("circuit", a.circuit_info.source), ("circuit edges", a.circuit_info.n_edges),
                  ("circuit mean PD", a.circuit.pd_mean), ("circuit mean CS", a.circuit.cs_mean)]
    return facts


def _lens_note(a: Analysis) -> str:
    return ("the 100 two-digit year tokens" if a.mode == "token" else
            "the 10 digit tokens, read as the tens digit of YY' (the tokenizer splits digits)")


def _years(a: Analysis, out: Path) -> Tuple[html.Section, List[Path]]:
    """Heatmaps of p(YY' | YY), the full model's and the circuit's."""
    files: List[Path] = []
    sec = html.Section("Year probabilities p(YY' | YY)")
    sec.paragraphs.append(
        "Each row is a start year YY (mean over the prompts that share it; grey rows: no prompt), each column a "
        "two-digit continuation YY'. A model that does greater-than puts its mass right of the dotted diagonal."
        + (" The tokenizer splits digits, so p(YY') = P(tens) x P(units | tens), teacher-forced." if a.mode != "token" else ""))
    files.append(heatmaps.plot_year_heatmap(a.full.matrix, out / "heatmap_model.png", title=f"{_short(a.model)}: full model"))
    files.append(heatmaps.write_year_matrix(out / "heatmap_model.csv", a.full.matrix))
    sec.figures.append(("heatmap_model.png", "Full model (matrix: heatmap_model.csv)"))
    if a.circuit is not None:
        files.append(heatmaps.plot_year_heatmap(a.circuit.matrix, out / "heatmap_circuit.png",
                                                title=f"{_short(a.model)}: circuit alone ({a.circuit_info.n_edges} edges)"))
        files.append(heatmaps.write_year_matrix(out / "heatmap_circuit.csv", a.circuit.matrix))
        sec.figures.append(("heatmap_circuit.png", "Circuit alone: every edge outside it carries the corrupted run's "
                                                   "value (matrix: heatmap_circuit.csv)"))
    return sec, files


def _pd_cs(a: Analysis, out: Path) -> Tuple[html.Section, List[Path]]:
    """PD and CS by start year."""
    files: List[Path] = []
    sec = html.Section("Probability difference and cutoff sharpness by start year")
    sec.paragraphs.append("PD = sum p(YY' > YY) - sum p(YY' <= YY); CS = p(YY+1) - p(YY-1), per prompt, then averaged "
                          "over the prompts sharing YY.")
    series = {"model": a.full, **({"circuit": a.circuit} if a.circuit is not None else {})}
    files.append(heatmaps.plot_pd_cs(series, out / "pd_cs.png"))
    files.append(heatmaps.write_pd_cs(out / "pd_cs.csv", series))
    sec.figures.append(("pd_cs.png", "PD and CS against YY (table: pd_cs.csv)"))
    rows = [("full model", a.full.pd_mean, a.full.pd_std, a.full.cs_mean, a.full.cs_std)]
    if a.circuit is not None:
        rows.append(("circuit", a.circuit.pd_mean, a.circuit.pd_std, a.circuit.cs_mean, a.circuit.cs_std))
    sec.tables.append(("Means over all prompts", ["", "PD mean", "PD std", "CS mean", "CS std"], rows))
    return sec, files


def _attention(a: Analysis, out: Path) -> Tuple[html.Section, List[Path]]:
    """Attention from the answer position."""
    files: List[Path] = []
    sec = html.Section("Attention from the answer position")
    how = "the circuit's heads" if a.circuit_info is not None else \
        f"the top {len(a.heads)} heads by |activation-patching score|"
    sec.paragraphs.append(f"Mean attention of {how} from the last position over the prompt's positions (clean prompts, "
                          "full model). The start year's position is red"
                          + (" (both digits)." if len(a.marks) > 1 else "."))
    files.append(attn_mod.plot_attention(a.attention, a.heads, a.labels, a.marks, out / "attention.png"))
    files.append(attn_mod.write_attention(out / "attention.csv", a.attention, a.heads, a.labels))
    sec.figures.append(("attention.png", "Mean attention per head (table: attention.csv)"))
    head_rows = []
    for i, (l, h) in enumerate(a.heads):
        name = names.format_node(names.head(l, h))
        yy_attn = float(sum(a.attention[i, p] for p in a.marks)) if a.attention.size else float("nan")
        head_rows.append((name, yy_attn, a.head_scores.get(name, float("nan"))))
    sec.tables.append(("Heads", ["head", "attention to YY", "activation-patching score"], head_rows))
    if not a.heads:
        sec.notes.append("The circuit has no heads.")
    return sec, files


def _mlps(a: Analysis, out: Path) -> Tuple[html.Section, List[Path]]:
    """The MLPs' logit lens and their direct and indirect effects."""
    files: List[Path] = []
    year_cols = [f"{y:02d}" for y in range(100)]
    sec = html.Section("MLP contributions")
    lens_note = _lens_note(a)
    sec.paragraphs.append(
        f"Logit lens: each MLP's output at the last position, through the final norm frozen at the clean run's scale "
        f"(centring kept for LayerNorm, biases left out) and the unembedding restricted to {lens_note}; each row is "
        "centred over those tokens and averaged over the prompts sharing YY.")
    for layer in a.mlp_layers:
        files.append(heatmaps.write_year_matrix(out / f"mlp_logit_lens_m{layer}.csv", a.lens[layer],
                                                a.lens_cols if a.mode != "token" else year_cols))
    files.append(mlps.plot_logit_lens(a.lens, a.lens_cols, a.lens_xlabel, out / "mlp_logit_lens.png"))
    sec.figures.append(("mlp_logit_lens.png", "Direct logits of each MLP (tables: mlp_logit_lens_m<layer>.csv)"))
    sec.paragraphs.append(
        "Direct and indirect effects by path patching (corrupted run as reference): direct patches only the edge "
        "m<l> -> logits, total patches the MLP's output on all its outgoing edges, indirect = total - direct. "
        "Effects are changes of the task's mean metric (PD"
        + (", the exact two-digit PD over both scored positions" if a.mode != "token" else "")
        + "); negative means the MLP helps.")
    files.append(mlps.plot_effects(a.effects, out / "mlp_effects.png"))
    files.append(mlps.write_effects(out / "mlp_effects.csv", a.effects))
    sec.figures.append(("mlp_effects.png", "Total, direct and indirect effect per MLP (table: mlp_effects.csv)"))
    sec.tables.append(("MLP effects", ["MLP", "total", "direct", "indirect"],
                       [(e.name, e.total, e.direct, e.indirect) for e in a.effects]))
    if not a.mlp_layers:
        sec.notes.append("The circuit has no MLPs.")
    return sec, files


def _neurons(a: Analysis, out: Path) -> Tuple[html.Section, List[Path]]:
    """The top neurons, their output directions and joint effect."""
    files: List[Path] = []
    lens_note = _lens_note(a)
    sec = html.Section("Neurons")
    sec.paragraphs.append(
        "Top neurons by exact activation-patching effect (each neuron's activation set to the corrupted run's at every "
        "position; change of the task's mean metric, PD). Output directions: W_out[layer, n] through the final "
        f"norm's weight and the unembedding over {lens_note}, centred. The joint effect patches the top neurons together.")
    if a.neurons:
        files.append(neurons.plot_directions(a.neurons, a.lens_cols, a.lens_xlabel, out / "neuron_directions.png"))
        files.append(neurons.plot_joint(a.neurons, out / "neuron_joint.png"))
        files.append(neurons.write_neurons(out / "neurons.csv", a.neurons))
        for rep in a.neurons:
            files.append(heatmaps.write_matrix_csv(out / f"neuron_directions_m{rep.layer}.csv", rep.directions,
                                                   "neuron", [f"m{rep.layer}.n{i}" for i, _ in rep.top], a.lens_cols))
        sec.figures.append(("neuron_directions.png", "Output directions of the top neurons"))
        sec.figures.append(("neuron_joint.png", "Single effects, their sum, and the joint effect (table: neurons.csv)"))
        for rep in a.neurons:
            rows = [(f"m{rep.layer}.n{i}", e) for i, e in rep.top]
            rows += [("sum of single effects", rep.sum_single), ("joint effect", rep.joint)]
            sec.tables.append((f"m{rep.layer}: top {len(rep.top)} of {rep.scored} neurons scored exactly",
                               ["neuron", "effect"], rows))
            if rep.scored < int(a.settings.get("d_mlp", rep.scored)):
                sec.notes.append(f"m{rep.layer}: the {rep.scored} neurons scored exactly were the strongest by "
                                 "attribution patching (gradient x activation change).")
    return sec, files


