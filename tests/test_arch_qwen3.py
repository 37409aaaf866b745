"""The engine on a tiny random qwen3 checkpoint against plain hooks on the Hugging Face model, in float64.

Features exercised: per-head q and k RMSNorm, grouped-query attention.  The checks are in ``arch_reference.ArchChecks``.
"""
from arch_reference import ArchChecks


class TestQwen3(ArchChecks):
    family = "qwen3"
    features = staticmethod(lambda w: bool(w.q_norm is not None and not w.qk_norm_full and w.n_kv_heads < w.n_heads))
