"""A slow, obviously correct edge patcher: the oracle the fast methods are tested against.

Semantics (the standard EAP/ACDC edge graph on a TransformerLens bridge).  In the patched run
every receiver input -- head ``h``'s q, k or v input at layer ``L``, MLP ``L``'s input, and the
logits' input (the final residual stream, before the final LayerNorm) -- equals the sum over
its senders of

* the sender's output in the corrupted run, if the edge sender->receiver is patched;
* the sender's output in this patched run, otherwise;

plus the attention output biases ``b_O``, which are not nodes and stay as they are.  Senders
are ``input`` (token + position embedding), every earlier head's result and every earlier MLP's
output (heads of layer ``L`` also feed ``m{L}``).

Implementation: the bridge's per-head flags make each receiver input its own hook point
(``blocks.L.hook_q_input`` ... of shape [batch, pos, n_heads, d_model]); in the clean run each
receiver hook adds ``corrupted_out - current_out`` of its patched senders to the residual
stream it is given.  Nothing else is changed.

Reduced MLPs (``neurons``: layer -> bool [d_mlp] of kept neurons): at ``blocks.L.mlp.hook_post``
(the hidden activations after the non-linearity) every neuron outside the mask takes its value
from the corrupted run; the MLP's output is then whatever the model computes from that.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from circuits import names

QKV = ("q", "k", "v")


def all_edges(n_layers: int, n_heads: int) -> list[str]:
    """Every edge of the graph, receivers in forward order (GPT-2 small: 32,491 edges)."""
    edges: list[str] = []
    upstream = ["input"]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        for head in heads:
            for qkv in QKV:
                edges += [f"{s}->{head}<{qkv}>" for s in upstream]
        upstream = upstream + heads
        edges += [f"{s}->m{layer}" for s in upstream]
        upstream = upstream + [f"m{layer}"]
    edges += [f"{s}->logits" for s in upstream]
    return edges


def _sender_hooks(n_layers: int) -> list[str]:
    return ["hook_embed", "hook_pos_embed"] + [
        name for layer in range(n_layers) for name in (f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.hook_mlp_out")
    ]


def _sender_output(acts: dict[str, torch.Tensor], node: names.Node) -> torch.Tensor:
    """A sender's output [batch, pos, d_model] from the activations of one run."""
    if node.kind == "input":
        return acts["hook_embed"] + acts["hook_pos_embed"]
    if node.kind == "head":
        return acts[f"blocks.{node.layer}.attn.hook_result"][:, :, node.index]
    if node.kind == "mlp":
        return acts[f"blocks.{node.layer}.hook_mlp_out"]
    raise ValueError(f"{names.format_node(node)} cannot send")


def _receiver_hook(node: names.Node, qkv: str | None) -> str:
    if node.kind == "head":
        return f"blocks.{node.layer}.hook_{qkv}_input"
    if node.kind == "mlp":
        return f"blocks.{node.layer}.hook_mlp_in"
    return "ln_final.hook_in"


class PerHeadFlags:
    """Turn on the bridge's per-head hooks; restore the previous settings on exit."""

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge

    def __enter__(self) -> None:
        cfg = self.bridge.cfg
        self.saved = (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
        self.bridge.set_use_attn_result(True)
        self.bridge.set_use_split_qkv_input(True)
        self.bridge.set_use_hook_mlp_in(True)

    def __exit__(self, *exc: object) -> None:
        result, split, mlp_in = self.saved
        self.bridge.set_use_attn_result(result)
        self.bridge.set_use_split_qkv_input(split)
        self.bridge.set_use_hook_mlp_in(mlp_in)


def _run(bridge: Any, tokens: torch.Tensor, hooks: list[tuple[str, Callable]]) -> torch.Tensor:
    with bridge.hooks(fwd_hooks=hooks):
        return bridge(tokens)


def sender_activations(bridge: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of every sender on ``tokens`` (flags must be on)."""
    acts: dict[str, torch.Tensor] = {}

    def save(name: str) -> Callable:
        def hook(t: torch.Tensor, hook: Any) -> None:
            acts[name] = t.detach().clone()

        return hook

    _run(bridge, tokens, [(n, save(n)) for n in _sender_hooks(bridge.cfg.n_layers)])
    return acts


def sender_stack(bridge: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Every sender's output through the bridge's hooks, in the graph's sender order: [S, b, p, d]
    (the embedding, with the learned positions where the model has them; each head; each MLP).
    The per-head flags must be on."""
    _, cache = bridge.run_with_cache(tokens)
    embed = cache["hook_embed"]
    outs = [embed + cache["hook_pos_embed"] if "hook_pos_embed" in cache else embed]
    for layer in range(bridge.cfg.n_layers):
        outs += list(cache[f"blocks.{layer}.attn.hook_result"].permute(2, 0, 1, 3))
        outs.append(cache[f"blocks.{layer}.hook_mlp_out"])
    return torch.stack(outs).detach()


def ig_inputs(clean: torch.Tensor, corrupted: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """EAP-IG's integration points between the corrupted and the clean input embedding, clean last."""
    return [corrupted + k / steps * (clean - corrupted) for k in range(1, steps + 1)]


def receiver_hook_names(n_layers: int) -> list[str]:
    """The hooks at every receiver input: each layer's q, k, v inputs and MLP input, then the final norm's."""
    names_ = []
    for layer in range(n_layers):
        names_ += [f"blocks.{layer}.hook_{x}_input" for x in "qkv"] + [f"blocks.{layer}.ln2.hook_in"]
    return names_ + ["ln_final.hook_in"]


def receiver_hook_grads(bridge: Any, tokens: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor],
                        resid0: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Gradients of ``loss(logits)`` w.r.t. every receiver hook's input, by hook name ([b, p, (heads,) d]).

    Each receiver hook adds a zero "probe" tensor to its input; the probe's gradient is the gradient
    with respect to that input alone.  ``resid0`` replaces the first residual stream (interpolated
    inputs for integrated gradients)."""
    probes: dict[str, torch.Tensor] = {}

    def probe(name: str) -> Callable:
        def add(t: torch.Tensor, hook: Any) -> torch.Tensor:
            probes[name] = torch.zeros_like(t, requires_grad=True)
            return t + probes[name]

        return add

    hooks = [(n, probe(n)) for n in receiver_hook_names(bridge.cfg.n_layers)]
    if resid0 is not None:
        hooks.insert(0, ("blocks.0.hook_resid_pre", lambda t, hook: resid0.clone()))
    with torch.enable_grad():
        loss(bridge.run_with_hooks(tokens, fwd_hooks=hooks)).backward()
    return {n: p.grad for n, p in probes.items()}


def edge_patched_logits(
    bridge: Any, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, patched_edges: Iterable[str],
    neurons: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits [batch, pos, vocab] of the clean run with ``patched_edges`` carrying corrupted activations
    (and, in each MLP of ``neurons``, the neurons outside its mask carrying their corrupted activations)."""
    neurons = neurons or {}
    with PerHeadFlags(bridge), torch.no_grad():
        corrupted = sender_activations(bridge, corrupted_tokens)
        post = {layer: _hidden(bridge, corrupted_tokens, layer) for layer in neurons}
    return reference_patched_logits(bridge, clean_tokens, corrupted, post, patched_edges, neurons)


def reference_patched_logits(
    bridge: Any, clean_tokens: torch.Tensor, reference: dict[str, torch.Tensor], reference_post: dict[int, torch.Tensor],
    patched_edges: Iterable[str], neurons: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Logits of the clean run with ``patched_edges`` carrying the sender activations ``reference`` (by
    hook name, as ``sender_activations`` gives them) and, in each MLP of ``neurons``, the neurons
    outside its mask carrying ``reference_post[layer]``."""
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    valid = set(all_edges(n_layers, n_heads))
    by_receiver: dict[tuple[str, int | None], list[names.Node]] = {}
    for raw in patched_edges:
        edge = names.parse_edge(raw)
        name = names.format_edge(edge)
        if name not in valid:
            raise ValueError(f"{raw!r} is not an edge of a {n_layers}-layer, {n_heads}-head model")
        hook = _receiver_hook(edge.dst, edge.qkv)
        head = edge.dst.index if edge.dst.kind == "head" else None
        by_receiver.setdefault((hook, head), []).append(edge.src)

    neurons = neurons or {}
    with PerHeadFlags(bridge), torch.no_grad():
        current: dict[str, torch.Tensor] = {}

        def save(name: str) -> Callable:
            def hook(t: torch.Tensor, hook: Any) -> None:
                current[name] = t.detach()

            return hook

        def patch(hook_name: str) -> Callable:
            heads = {h: srcs for (n, h), srcs in by_receiver.items() if n == hook_name}

            def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
                t = t.clone()
                for head, senders in heads.items():
                    delta = sum(_sender_output(reference, s) - _sender_output(current, s) for s in senders)
                    if head is None:
                        t += delta
                    else:
                        t[:, :, head] += delta
                return t

            return hook

        def reduce(layer: int) -> Callable:
            def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
                out = t.clone()
                drop = ~neurons[layer].bool()
                out[..., drop] = reference_post[layer][..., drop]
                return out

            return hook

        hooks = [(f"blocks.{layer}.mlp.hook_post", reduce(layer)) for layer in sorted(neurons)]
        hooks += [(n, save(n)) for n in _sender_hooks(n_layers)]
        hooks += [(n, patch(n)) for n in dict.fromkeys(n for n, _ in by_receiver)]
        return _run(bridge, clean_tokens, hooks)


def _hidden(bridge: Any, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    """MLP ``layer``'s hidden activations [batch, pos, d_mlp] (``hook_post``) on ``tokens``."""
    acts: dict[str, torch.Tensor] = {}

    def save(t: torch.Tensor, hook: Any) -> None:
        acts["post"] = t.detach().clone()

    _run(bridge, tokens, [(f"blocks.{layer}.mlp.hook_post", save)])
    return acts["post"]


def hooks_left(bridge: Any) -> list[str]:
    """Names of hook points that still hold a hook (should be empty after any call here)."""
    return sorted({name for name, point in bridge.hook_dict.items() if point.has_hooks()})


def boot_float64(folder, model, tokenizer):
    """Save an HF ``model`` and ``tokenizer`` to ``folder``, boot them as a float64 bridge in compatibility
    mode, and build the float64 engine over its weights: ``(bridge, engine)``."""
    from transformer_lens.model_bridge import TransformerBridge

    from circuits.engine.engine import GraphEngine
    from circuits.models.weights import cast_weights, extract_weights

    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu", dtype=torch.float64)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    return bridge, GraphEngine(cast_weights(extract_weights(bridge), dtype=torch.float64))


def tiny_gpt2_float64(folder):
    """A 2-layer, 2-head, width-16 GPT-2 with random weights (seed 0) and GPT-2's tokenizer, booted in float64
    (:func:`boot_float64`): ``(bridge, engine, tokenizer)``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from circuits.models.tokenizers import gpt2_tokenizer

    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=len(tok), initializer_range=0.3)
    bridge, engine = boot_float64(folder, GPT2LMHeadModel(cfg), tok)
    return bridge, engine, tok


def hf_model(folder):
    """The plain Hugging Face model of ``folder`` in float64, for the references below."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float64).eval()


def hf_answer_contrast(model, dataset) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The answer-contrast tasks' metric and accuracy from a plain Hugging Face ``model``, one unpadded
    prompt at a time: ``sum_j logit_j(answer_j) - logit_j(wrong_j)`` [n], 1 where the top token is right
    at every j [n], and each prompt's logits at its answer positions ([k, V] each), with ``j`` over the
    prompt's answer positions and the ids of ``metadata[i]["answer_ids"]`` / ``["wrong_ids"]``."""
    diffs, right, rows = [], [], []
    for i, meta in enumerate(dataset.metadata):
        pos = [int(p) for p in dataset.answer_pos[i].reshape(-1)]
        with torch.no_grad():
            logits = model(dataset.clean[i, : pos[-1] + 1][None]).logits[0]
        diffs.append(sum(float(logits[p, a] - logits[p, w]) for p, a, w in zip(pos, meta["answer_ids"], meta["wrong_ids"])))
        right.append(float(all(int(logits[p].argmax()) == a for p, a in zip(pos, meta["answer_ids"]))))
        rows.append(logits[pos])
    return torch.tensor(diffs, dtype=torch.float64), torch.tensor(right), rows


def check_answer_contrast(task, loaded, hf, dataset) -> tuple[dict, list[torch.Tensor]]:
    """Assert that ``task``'s metric on the engine (what discovery scores) and its reported
    ``logit_difference`` equal :func:`hf_answer_contrast` on ``hf``; return ``(task.evaluate(...), rows)``."""
    from circuits.engine.engine import GraphEngine
    from circuits.data.evaluation import model_forward

    want, right, rows = hf_answer_contrast(hf, dataset)
    got = task.metric(GraphEngine.from_model(loaded).run(dataset.clean, dataset.answer_pos).logits, dataset)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    reported = task.evaluate(model_forward(loaded), dataset)
    torch.testing.assert_close(reported["logit_difference"].double(), want, rtol=1e-4, atol=1e-4)
    assert torch.equal(reported["top1" if "top1" in reported else "accuracy"], right)
    return reported, rows
