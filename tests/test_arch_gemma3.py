"""The engine on a tiny random gemma3 checkpoint against plain hooks on the Hugging Face model, in float64.

Features exercised: Gemma 2 without soft-caps, plus per-head q/k norms, a per-layer window pattern (layer_types) and local/global rotary bases.  The checks are in ``arch_reference.ArchChecks``.
"""
from arch_reference import ArchChecks


class TestGemma3(ArchChecks):
    family = "gemma3"
    features = staticmethod(lambda w: bool(w.q_norm is not None and w.attn_softcap is None and w.rotary_bases == (10.0, 1000.0, 10.0, 1000.0)))
