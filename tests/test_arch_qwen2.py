"""The engine on a tiny random qwen2 checkpoint against plain hooks on the Hugging Face model, in float64.

Features exercised: q/k/v biases, grouped-query attention.  The checks are in ``arch_reference.ArchChecks``.
"""
from arch_reference import ArchChecks


class TestQwen2(ArchChecks):
    family = "qwen2"
    features = staticmethod(lambda w: bool(w.b_Q.abs().sum() > 0 and w.n_kv_heads < w.n_heads))
