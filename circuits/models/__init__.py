"""Load a model spec into a TransformerLens ``TransformerBridge`` with its tokenizer.

Specs: a hub name (``gpt2``), a local HF checkpoint folder, a ``.gguf`` file, or
``planted`` / ``planted-<variant>`` (models whose circuit we built).  Every spec
ends in a local or hub HF checkpoint booted by ``TransformerBridge.boot_transformers``,
so the rest of the library never special-cases a model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from circuits.models.loading import load_model, resolve_checkpoint

__all__ = ["LoadedModel", "load_model", "resolve_checkpoint"]


@dataclass(frozen=True)
class LoadedModel:
    """A booted model: the bridge (compatibility mode, raw weights), its tokenizer and the spec it came from."""

    bridge: Any
    tokenizer: Any
    spec: str
    checkpoint: str
