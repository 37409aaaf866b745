"""How ``planted_scores_6051453.json`` was made: run at commit 6051453 (before answers of several
positions), ``python tests/data/make_planted_scores.py`` writes every method's scores on ``planted``
(n=8, seed=3, corrupted and mean ablation, neurons of m1), a random circuit's faithfulness and the
per-prompt metric.  ``tests/test_metrics.py`` holds today's code to them (1e-6)."""
import json

import torch

from circuits.engine.engine import GraphEngine
from circuits.circuit.faithfulness import faithfulness
from circuits.models import load_model
from circuits.registry import get_method, get_task
from circuits.methods.base import MethodOptions

torch.set_num_threads(1)
loaded = load_model("planted")
engine = GraphEngine.from_model(loaded)
task = get_task("greater-than")
data = task.build(loaded.tokenizer, n=8, seed=3)
out = {"commit": "6051453", "model": "planted", "n": 8, "seed": 3, "methods": {}}
for m in ["eap", "eap-ig", "activation-patching", "path-patching"]:
    for abl in ["corrupted", "mean"]:
        s = get_method(m).score(engine, data, task.metric, MethodOptions(ablation=abl, neurons=("m1",)))
        out["methods"][f"{m}/{abl}"] = {"edges": {k: v for k, v in s.edge_dict().items() if v != 0.0},
                                         "nodes": dict(s.node_scores),
                                         "neurons": {k: [[i, x] for i, x in v] for k, v in s.neuron_scores.items()}}
valid = engine.graph.valid_mask()
keep = valid.clone()
torch.manual_seed(0)
keep &= torch.rand(keep.shape) < 0.5
f = faithfulness(engine, data, task.metric, keep)
out["faithfulness_random_half"] = {"m_full": f.m_full, "m_empty": f.m_empty, "m_circuit": f.m_circuit, "f": f.f}
out["metric"] = [float(x) for x in task.metric(engine.run(data.clean, data.answer_pos).logits, data)]
json.dump(out, open("tests/data/planted_scores_6051453.json", "w"), indent=0, sort_keys=True)
