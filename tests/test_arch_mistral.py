"""The engine on a tiny random mistral checkpoint against plain hooks on the Hugging Face model, in float64.

Features exercised: sliding-window attention (a window of 4, shorter than the prompts), grouped-query attention.  The checks are in ``arch_reference.ArchChecks``.
"""
from arch_reference import ArchChecks


class TestMistral(ArchChecks):
    family = "mistral"
    features = staticmethod(lambda w: bool(w.windows == (4,) * w.n_layers))
