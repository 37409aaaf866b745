"""The options and steps several jobs share: model, task, prompts, batch size, precision."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from circuits.errors import CircuitsError
from circuits.options import Option

MODEL_HELP = "Model: a hub name (gpt2), a local HF checkpoint folder, a .gguf file, or planted[-deep]."
DATA_HELP = "Read prompts from a CSV or JSONL file instead of sampling (at most --n of them; formats as in `circuits evaluate`)."
HOLDOUT_HELP = ("Fraction of the prompts held out: scoring and selection never see them, and the circuit's "
                "faithfulness is also reported on them (0: off) (default: 0.2, or 0 when that is under one prompt).")
ABLATION_HELP = ("What patched edges carry: corrupted (the corrupted run), mean (the clean mean over prompts, per "
                 "position), mean-positions (over prompts and positions) or zero.")
METRIC_HELP = ("Metric to score and select with: task (the task's own) or kl (KL divergence of the patched "
               "next-token distribution from the clean one at the answer positions).")
DTYPE_HELP = "Precision of the model and the engine's buffers: float32, bfloat16 or float16 (scores sum in float32)."
BATCH_HELP = "Prompts per forward pass (0: all at once; auto: the largest batch that fits --max-memory)."
MEMORY_HELP = "Memory budget of --batch-size auto, e.g. 16GB or 4GiB (default: 80% of the free RAM or GPU memory)."
BOOTSTRAP_HELP = ("Measure the circuit's stability: score K seeded resamples of the prompts (K >= 2; 0: off), choose the "
                  "circuit of the same size in each, and report the mean pairwise edge and node Jaccard and each kept "
                  "edge's inclusion frequency.")
DEFAULT_HOLDOUT = 0.2
ABLATIONS = ("corrupted", "mean", "mean-positions", "zero")  # circuits.engine.ablation.ABLATIONS, without torch
DTYPES = ("float32", "bfloat16", "float16")


def _batch_size(text: str) -> str:
    text = str(text).strip().lower()
    if text != "auto" and not (text.isdigit() and int(text) >= 0):
        raise CircuitsError(f"--batch-size must be a whole number >= 0 or auto (got {text!r})")
    return text


def _memory(text: str) -> str:
    from circuits.engine.memory import parse_memory

    parse_memory(text)
    return text


def _device(text: str) -> str:
    """cpu, mps or cuda[:N]; a CUDA device must exist here (torch is imported only to ask that)."""
    import re

    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", str(text)):
        raise CircuitsError(f"--device must be a torch device such as cpu or cuda (got {text!r})")
    if text.startswith("cuda"):
        import torch

        index = int(text.split(":")[1]) if ":" in text else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise CircuitsError(f"--device {text}: no such CUDA GPU here ({torch.cuda.device_count()} found); use --device cpu")
    return text


def _plugin(kind: str):
    """A check that ``name`` is an installed task or method (the registry's one-line error otherwise)."""
    def check(name: str) -> str:
        from circuits import registry

        (registry.get_task if kind == "task" else registry.get_method)(name)
        return name

    return check


TASK = Option("task", str, None, "Task name (see `circuits tasks list`).", argument=True, parse=_plugin("task"))
MODEL = Option("model", str, "gpt2", MODEL_HELP, short="-m")
N = Option("n", int, 100, "Number of prompts.", minimum=1)
SEED = Option("seed", int, 0, "Seed for prompt sampling (and for choosing the held-out prompts).")
DATA = Option("data", Path, None, DATA_HELP, served=False)
TASK_FILE = Option("task_file", Path, None, "Load the task from a local Python file.", served=False)
DEVICE = Option("device", str, "cpu", "torch device (cpu, cuda).", parse=_device)
DTYPE = Option("dtype", str, "float32", DTYPE_HELP, choices=DTYPES)
BATCH_SIZE = Option("batch_size", str, "0", BATCH_HELP, parse=_batch_size)
MAX_MEMORY = Option("max_memory", str, None, MEMORY_HELP, parse=_memory)
ABLATION = Option("ablation", str, "corrupted", ABLATION_HELP, choices=ABLATIONS)
METRIC = Option("metric", str, "task", METRIC_HELP, choices=("task", "kl"))
HOLDOUT = Option("holdout", float, None, HOLDOUT_HELP, minimum=0.0, maximum=0.99)
METHOD = Option("method", str, None, "Scoring method (see `circuits methods list`): eap, eap-ig, activation-patching, "
                "path-patching, acdc, or a plugin's. Each method's own options follow.", required=True, parse=_plugin("method"))


def resolve_task(task: Optional[str], task_file: Optional[Path]):
    """The task object named on the command line (a registered name or --task-file)."""
    from circuits.registry import get_task, load_task_file

    if task_file is not None:
        return load_task_file(task_file)
    if not task:
        raise CircuitsError("name a task (see `circuits tasks list`) or pass --task-file FILE")
    return get_task(task)


def build_prompts(task_obj, tokenizer, *, n: int, seed: int, data: Optional[Path]):
    """The task's prompts: sampled, or read from ``data``."""
    return task_obj.build(tokenizer, n=n, seed=seed, **({"data": data} if data is not None else {}))


def load_engine(load, model: str, device: str, dtype: str = "float32") -> Tuple[Any, Any]:
    """The booted model's tokenizer and its engine in ``dtype`` (the bridge is dropped: the engine has
    its weights).  Refuses an architecture the engine does not implement."""
    from circuits.engine.engine import GraphEngine
    from circuits.engine.memory import parse_dtype
    from circuits.models.weights import cast_weights

    torch_dtype = parse_dtype(dtype)
    loaded = load(model, device=device)
    weights = GraphEngine.from_model(loaded).w
    if weights.W_E.dtype != torch_dtype:
        weights = cast_weights(weights, dtype=torch_dtype)
    return loaded.tokenizer, GraphEngine(weights)


def batch_plan(batch_size: str, max_memory: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
    """``--batch-size`` (None for auto) and the ``--max-memory`` budget in bytes (None: the default)."""
    from circuits.engine.memory import parse_batch_size, parse_memory

    batch = parse_batch_size(batch_size)
    budget = None if max_memory is None else parse_memory(max_memory)
    if budget is not None and batch is not None:
        raise CircuitsError("--max-memory is the budget of --batch-size auto; pass --batch-size auto or drop --max-memory")
    return batch, budget


def auto_batch(engine, dataset, task_obj, budget: Optional[int], ablation: str, notes: list):
    """``--batch-size auto``: the probe's choice (said in ``notes``)."""
    from circuits.circuit.batch_size import auto_batch_size

    auto = auto_batch_size(engine, dataset, task_obj.metric, max_memory=budget, ablation=ablation)
    notes.append(f"--batch-size auto: {auto.batch_size} prompts per batch ({auto.bytes_per_prompt / 2 ** 20:.1f} MiB per "
                 f"prompt measured on {auto.probe_prompts}; budget {auto.max_memory / 2 ** 30:.2f} GiB)")
    return auto


def neuron_layer_names(layers) -> Tuple[str, ...]:
    from circuits import names

    return tuple(names.format_node(names.mlp(layer)) for layer in layers)


def parse_mlp_layers(text: Optional[str]) -> Optional[Tuple[int, ...]]:
    """``m8,m9`` -> (8, 9); None when not given."""
    from circuits import names

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


def check_keep_neurons(keep_neurons: Optional[int], layers, d_mlp: Optional[int] = None) -> None:
    """The one check of ``--keep-neurons`` (with ``--neurons``), before and after the model is known."""
    if keep_neurons is None:
        if layers:
            raise CircuitsError("--neurons needs --keep-neurons K: how many top neurons each MLP keeps")
        return
    if not layers:
        raise CircuitsError("--keep-neurons needs --neurons: name the MLPs to reduce, e.g. --neurons m10 --keep-neurons 10")
    if keep_neurons < 1:
        raise CircuitsError(f"--keep-neurons must be at least 1 (got {keep_neurons})")
    if d_mlp is not None and keep_neurons > d_mlp:
        raise CircuitsError(f"--keep-neurons {keep_neurons}: this model's MLPs have {d_mlp} neurons; pass fewer")


def stats(values) -> Dict[str, float]:
    values = values.double()
    std = float(values.std()) if values.numel() > 1 else 0.0
    return {"mean": float(values.mean()), "std": std}
