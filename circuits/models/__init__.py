"""Load a model spec into a TransformerLens ``TransformerBridge`` with its tokenizer.

Specs: a hub name (``gpt2``), a local HF checkpoint folder, a ``.gguf`` file, or
``planted`` / ``planted-<variant>`` (models whose circuit we built).  Every spec
ends in a local or hub HF checkpoint booted by ``TransformerBridge.boot_transformers``,
so the rest of the library never special-cases a model.
"""
from __future__ import annotations

from circuits.models.loading import LoadedModel, load_model, resolve_checkpoint

__all__ = ["LoadedModel", "load_model", "resolve_checkpoint"]
