"""What the graph engine implements, checked before anything is scored.

Two checks, both ending in a one-line ``CircuitsError``:

- :func:`check_config` reads the Hugging Face config (and the module names) and refuses a
  model that uses a feature the engine does not compute: mixture-of-experts MLPs, cross-attention,
  ALiBi, and outside the families of ``circuits.models.hf_weights`` (Qwen 2/3, Mistral, GPT-NeoX,
  OLMo 2, Gemma 2/3, which implement them) q/k norms, soft-capping, sliding windows, embedding or
  residual multipliers (Granite, MiniCPM), parallel attention and MLP (GPT-J, Phi, Cohere),
  post-norms, and biases it would ignore (a gated MLP's biases).
- :func:`check_logits` runs a random prompt through the engine and through the bridge and
  refuses a model whose logits differ beyond float tolerance, for whatever the first check missed.

:func:`logits_checked` remembers a model that passed the logit check (``$CIRCUITS_CACHE/checks``),
so loading the same model again with the same code costs no extra forward pass.
"""
from __future__ import annotations

from typing import Any, List, Optional

from circuits.errors import CircuitsError

QK_NORM_MODULES = ("q_norm", "k_norm", "q_layernorm", "k_layernorm", "query_layernorm", "key_layernorm")
POST_NORM_MODULES = ("post_feedforward_layernorm", "pre_feedforward_layernorm", "post_attention_norm")
SCALED_EMBEDDING_FAMILIES = ("gemma", "recurrent_gemma", "t5gemma", "vaultgemma")
PARALLEL_FAMILIES = ("gptj", "phi", "codegen", "cohere", "cohere2")
MULTIPLIERS = ("embedding_multiplier", "scale_emb", "emb_scale", "embedding_scale", "residual_multiplier",
               "attention_multiplier", "logits_scaling", "logit_scale", "mup_width_multiplier")
MOE_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok")
ALIBI_FAMILIES = ("bloom", "mpt", "baichuan")
CHECK_LENGTH = 10  # one random prompt, every position compared
RTOL = 1e-3  # of the largest |logit|: float32 rounding is ~1e-6 of it

__all__ = ["unsupported_features", "check_config", "check_logits", "logits_checked", "fingerprint"]
FINGERPRINT_SAMPLE = 4096  # values read from each weight tensor for the fingerprint (evenly strided)


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def _set(config: Any, name: str) -> bool:
    value = getattr(config, name, None)
    return value is not None and value is not False and value != 0


def unsupported_features(config: Any, module_names: Optional[List[str]] = None) -> List[str]:
    """The features of a HF ``config`` (and its model's module names) the engine does not implement."""
    from circuits.models.hf_weights import FAMILIES

    cfg = _text_config(config)
    model_type = str(getattr(cfg, "model_type", "") or "")
    leaves = {name.rsplit(".", 1)[-1] for name in (module_names or [])}
    found: List[str] = []
    if any(_set(cfg, f) for f in MOE_FIELDS) or leaves & {"experts", "block_sparse_moe"}:
        found.append("mixture-of-experts MLPs")
    if (getattr(cfg, "add_cross_attention", False) is True or getattr(config, "is_encoder_decoder", False) is True
            or leaves & {"crossattention", "cross_attn", "encoder_attn"}):
        found.append("cross-attention")
    if (model_type in ALIBI_FAMILIES or getattr(cfg, "alibi", False) is True
            or str(getattr(cfg, "position_embedding_type", "")) == "alibi"):
        found.append("ALiBi positions")
    if model_type in FAMILIES and getattr(config, "text_config", None) is None:  # implemented: see docs/architectures.md
        if getattr(cfg, "mlp_bias", False) is True:
            found.append("MLP biases (the engine's gated MLP has none)")
        if model_type == "gpt_neox" and getattr(cfg, "use_parallel_residual", True) is False:
            found.append("GPT-NeoX without parallel residual")
        return found
    if leaves & set(QK_NORM_MODULES) or any(_set(cfg, f) for f in ("qk_layernorm", "use_qk_norm", "qk_norm")):
        found.append("q/k norm")
    if any(_set(cfg, f) for f in ("attn_logit_softcapping", "final_logit_softcapping", "logit_softcapping")):
        found.append("logit soft-capping")
    window = getattr(cfg, "sliding_window", None)
    max_pos = getattr(cfg, "max_position_embeddings", None) or 0
    layer_types = getattr(cfg, "layer_types", None) or ()
    if ("sliding_attention" in layer_types or (window and getattr(cfg, "use_sliding_window", True) is not False
                                               and window < max_pos) or _set(cfg, "attention_chunk_size")):
        found.append("sliding-window attention")
    if model_type.startswith(SCALED_EMBEDDING_FAMILIES):
        found.append("embedding multiplier (sqrt(d_model)) and 1 + weight norms")
    elif any(_set(cfg, f) and getattr(cfg, f) != 1 for f in MULTIPLIERS) or getattr(cfg, "scale_embedding", False):
        found.append("embedding/residual multipliers")
    if (model_type in PARALLEL_FAMILIES
            or any(getattr(cfg, f, False) is True for f in ("parallel_attn", "use_parallel_residual", "parallel_residual"))):
        found.append("parallel attention and MLP")
    if leaves & set(POST_NORM_MODULES) or model_type.startswith(("olmo2", "olmo3")):
        found.append("norms after attention/MLP outputs")
    if getattr(cfg, "mlp_bias", False) is True:
        found.append("MLP biases (the engine's gated MLP has none)")
    return found


def check_config(config: Any, module_names: Optional[List[str]] = None) -> None:
    """Raise a one-line ``CircuitsError`` naming the architecture and what it needs, if anything is missing."""
    if config is None:
        return
    found = unsupported_features(config, module_names)
    if found:
        cfg = _text_config(config)
        arch = (getattr(config, "architectures", None) or [None])[0] or getattr(cfg, "model_type", "this model")
        raise CircuitsError(
            f"{arch} is not supported by the graph engine: it uses {', '.join(found)}, which the engine does not "
            "implement (supported: GPT-2, Llama, Qwen 2/2.5/3, Mistral, GPT-NeoX, OLMo 2, Gemma 2/3; "
            "see docs/architectures.md); `circuits evaluate` still runs it")


def check_length(engine, bridge) -> int:
    """The logit check's prompt length: ``CHECK_LENGTH``, or the model's context length if shorter."""
    limits = [CHECK_LENGTH]
    if engine.w.W_pos is not None:
        limits.append(int(engine.w.W_pos.shape[0]))
    config = _text_config(getattr(getattr(bridge, "original_model", None), "config", None))
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
    return max(1, min(limits))


def check_logits(engine, bridge) -> None:
    """Refuse a model whose engine logits differ from the bridge's at any position of a random prompt."""
    import torch

    from circuits.models.hf_weights import reads_from_hf

    g = torch.Generator().manual_seed(0)
    vocab = int(engine.w.W_E.shape[0])
    length = check_length(engine, bridge)
    tokens = torch.randint(0, vocab, (1, length), generator=g).to(engine.device)
    every = torch.arange(length, device=engine.device)[None]  # logits at every position: [1, p, V]
    hf = getattr(bridge, "original_model", None)
    with torch.no_grad():
        ours = engine.run(tokens, every).logits.double()
        theirs = (hf(tokens).logits if reads_from_hf(getattr(hf, "config", None)) else bridge(tokens)).double()
    if ours.shape != theirs.shape:
        raise CircuitsError(f"the graph engine gives logits of shape {tuple(ours.shape)} but the model {tuple(theirs.shape)}; "
                            "this architecture is not supported by the graph engine")
    gap = float((ours - theirs).abs().max())
    scale = max(1.0, float(theirs.abs().max()))
    if not gap <= RTOL * scale:
        arch = type(getattr(bridge, "original_model", bridge)).__name__
        raise CircuitsError(
            f"{arch}: the graph engine's logits differ from the model's by {gap:.3g} (largest |logit| {scale:.3g}), "
            "so it computes something this architecture does differently; it is not supported by the graph engine")


def fingerprint(engine, bridge) -> str:
    """A key for "this model, run by this code": the architecture and its config, every weight's name, shape,
    dtype and an evenly strided sample of its values, and the versions of circuits, torch, transformers and
    TransformerLens with the source of the engine, the weight extraction and these checks."""
    import dataclasses
    import hashlib
    import json
    import sys
    from importlib import metadata
    from pathlib import Path

    import torch

    import circuits
    from circuits.models import hf_weights as hf_module
    from circuits.models import weights as weights_module

    engine_module = sys.modules[type(engine).__module__]  # the engine's own code, without importing it here

    h = hashlib.blake2b(digest_size=16)
    model = getattr(bridge, "original_model", bridge)
    config = getattr(model, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else {}
    versions = [circuits.__version__, torch.__version__]
    for dist in ("transformers", "transformer-lens"):
        try:
            versions.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            versions.append(None)
    h.update(json.dumps([type(model).__name__, settings, versions], sort_keys=True, default=str).encode())
    for module in (engine_module, weights_module, hf_module):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    for field in dataclasses.fields(engine.w):
        value = getattr(engine.w, field.name)
        if isinstance(value, torch.Tensor):
            at = torch.arange(0, value.numel(), max(1, value.numel() // FINGERPRINT_SAMPLE), device=value.device)
            sample = value.detach()[torch.unravel_index(at, value.shape)].to("cpu", torch.float64)  # no full copy
            h.update(f"{field.name}{tuple(value.shape)}{value.dtype}".encode())
            h.update(sample.numpy().tobytes())
        else:
            h.update(f"{field.name}={value!r}".encode())
    return h.hexdigest()


def logits_checked(engine, bridge) -> bool:
    """:func:`check_logits`, once per model and code: a pass is recorded under :func:`fingerprint` in
    ``$CIRCUITS_CACHE/checks`` and skipped next time (delete that folder to check again).  Returns True when
    the check ran.  A cache that cannot be written only means the check runs again next time."""
    import json

    from circuits.atomic import write_atomic
    from circuits.models.cache import cache_dir

    marker = cache_dir() / "checks" / f"{fingerprint(engine, bridge)}.json"
    if marker.is_file():
        return False
    check_logits(engine, bridge)
    arch = type(getattr(bridge, "original_model", bridge)).__name__
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(marker, json.dumps({"architecture": arch, "check": "logits", "length": check_length(engine, bridge)}) + "\n")
    except OSError:
        pass
    return True
