"""Tiny random checkpoints of every architecture family the graph engine implements.

Each is a few layers wide enough to have grouped-query attention where the family has it, with a
large init and small windows and soft-caps, so that every feature of the family changes the numbers
(used by the per-family reference tests and ``scripts/make_arch_checkpoints.py``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

__all__ = ["FAMILIES", "tiny_config", "tiny_model", "write_checkpoint"]

COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, max_position_embeddings=128, initializer_range=0.2, tie_word_embeddings=False)
WINDOW = 4  # shorter than any test prompt


def _qwen2(t):
    from transformers import Qwen2Config
    return Qwen2Config(**{**COMMON, **t})


def _qwen3(t):
    from transformers import Qwen3Config
    return Qwen3Config(**{**COMMON, **t})


def _mistral(t):
    from transformers import MistralConfig
    return MistralConfig(**{**COMMON, "sliding_window": WINDOW, **t})


def _gpt_neox(t):
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(**{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
                            "max_position_embeddings": 128, "initializer_range": 0.2, "rotary_pct": 0.5,
                            "use_parallel_residual": True, "tie_word_embeddings": False, **t})


def _olmo2(t):
    from transformers import Olmo2Config
    return Olmo2Config(**{**{k: v for k, v in COMMON.items() if k != "head_dim"}, **t})


def _gemma2(t):
    from transformers import Gemma2Config
    return Gemma2Config(**{**COMMON, "query_pre_attn_scalar": 24, "sliding_window": WINDOW, "attn_logit_softcapping": 2.0,
                           "final_logit_softcapping": 3.0, "hidden_activation": "gelu_pytorch_tanh", **t})


def _gemma3(t):
    from transformers import Gemma3TextConfig
    layers = t.get("num_hidden_layers", 4)
    return Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 4, "query_pre_attn_scalar": 24, "sliding_window": WINDOW,
                               "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
                               "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                                                   "full_attention": {"rope_type": "default", "rope_theta": 1000.0}},
                               "hidden_activation": "gelu_pytorch_tanh", **t})


def _mixtral(t):
    from transformers import MixtralConfig
    return MixtralConfig(**{**{k: v for k, v in COMMON.items() if k != "head_dim"}, "num_local_experts": 4,
                            "num_experts_per_tok": 2, **t})


FAMILIES: Dict[str, Callable[[dict], Any]] = {
    "qwen2": _qwen2, "qwen3": _qwen3, "mistral": _mistral, "gpt_neox": _gpt_neox, "olmo2": _olmo2,
    "gemma2": _gemma2, "gemma3": _gemma3,
}
REFUSED: Dict[str, Callable[[dict], Any]] = {"mixtral": _mixtral}


def tiny_config(family: str, tokenizer, **overrides):
    """The config of ``family``'s tiny model, sized to ``tokenizer`` (``overrides``: config fields to change)."""
    make = FAMILIES.get(family) or REFUSED[family]
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    return make({**ids, **overrides})


def tiny_model(family: str, tokenizer, *, seed: int = 0, **overrides):
    """A random ``family`` model (eager attention, eval mode) with a large init."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(family, tokenizer, **overrides)
    cfg._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():  # norms and biases away from their init, so a wrong offset or a dropped bias shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def write_checkpoint(family: str, folder: Path, tokenizer, *, seed: int = 0) -> Path:
    """Save ``family``'s tiny model and ``tokenizer`` to ``folder`` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_model(family, tokenizer, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
