"""Evaluate a task's reported metrics on a booted model (no patching)."""
from __future__ import annotations

from typing import Any, Dict

from circuits.data.dataset import PromptDataset
from circuits.data.task import evaluate


def model_forward(loaded):
    """``tokens -> logits`` for a ``LoadedModel``, on the model's device, without gradients."""
    import torch

    bridge = loaded.bridge
    device = next(bridge.parameters()).device

    def forward(tokens):
        with torch.no_grad():
            return bridge(tokens.to(device)).cpu()

    return forward


def evaluate_model(task, loaded, dataset: PromptDataset) -> Dict[str, Any]:
    """The task's per-prompt metrics on the full model: name -> tensor [n]."""
    return evaluate(task, model_forward(loaded), dataset)
