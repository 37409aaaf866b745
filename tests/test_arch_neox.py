"""The engine on a tiny random gpt_neox checkpoint against plain hooks on the Hugging Face model, in float64.

Features exercised: parallel attention and MLP, partial rotary (rotary_pct 0.5), biases, LayerNorm.  The checks are in ``arch_reference.ArchChecks``.
"""
from arch_reference import ArchChecks


class TestNeox(ArchChecks):
    family = "gpt_neox"
    features = staticmethod(lambda w: bool(w.parallel and w.rotary_dim == w.d_head // 2 and w.b_in.abs().sum() > 0))
