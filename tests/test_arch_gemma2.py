"""The engine on a tiny random gemma2 checkpoint against plain hooks on the Hugging Face model, in float64.

Features exercised: sqrt(d_model) embedding scale, 1 + weight norms, pre- and post-norms, attention and final soft-caps that bind, query_pre_attn_scalar, windows on alternate layers, GeGLU, grouped-query attention.  The checks are in ``arch_reference.ArchChecks``.
"""
from arch_reference import ArchChecks


class TestGemma2(ArchChecks):
    family = "gemma2"
    features = staticmethod(lambda w: bool(w.emb_scale == 8.0 and w.attn_softcap and w.final_softcap and w.windows == (4, None, 4) and w.act_fn == 'gelu_new'))
