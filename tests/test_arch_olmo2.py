"""The engine on a tiny random olmo2 checkpoint against plain hooks on the Hugging Face model, in float64.

Features exercised: norms after attention and the MLP only, q/k norm over the whole projection.  The checks are in ``arch_reference.ArchChecks``.
"""
from arch_reference import ArchChecks


class TestOlmo2(ArchChecks):
    family = "olmo2"
    features = staticmethod(lambda w: bool(w.ln1_w is None and w.attn_post_w is not None and w.qk_norm_full))
