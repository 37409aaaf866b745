"""The graph engine: the model's forward pass written over its weights, with edge-level control.

It does three things TransformerLens's per-head flags are usually used for, at the cost of
an ordinary forward pass:

- **collect** every sender's output: the embedding, each head's ``z_h @ W_O[h]``, each MLP;
- **patch edges**: each receiver input (a head's q, k or v input, an MLP's input, the
  logits' input) is the residual stream plus, for every patched edge ``s -> r``,
  ``reference[s] - current[s]``; heads whose q/k/v inputs differ are computed per head;
- **trace gradients** of the metric with respect to every receiver input, from the
  gradients of q, k, v, the MLP's normalized input and the final normalized residual,
  mapped back through the normalization's Jacobian (``norm_vjp``), so no per-head copies
  of the residual stream are made in the forward or backward pass.

Bias terms (``b_O``) are not nodes: they are constants, the same in every run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from circuits.engine.graph import ComputationalGraph
from circuits.errors import CircuitsError
from circuits.models.weights import ModelWeights
from circuits.engine.rules import BackwardRules, identity_rule, scale_grad, softmax

ResidEdit = Callable[[int, Tensor], Tensor]  # (layer, resid_mid [b,p,d]) -> resid_mid
PostEdit = Callable[[int, Tensor], Tensor]  # (layer, mlp hidden [b,p,m]) -> hidden


@dataclass(frozen=True)
class Patch:
    """Edge patching: ``keep`` [S, R] is 1 where an edge carries the current run's value and 0 where
    it carries ``reference`` [S, b, p, d] (corrupted or mean outputs).  Fractions interpolate.
    A positional keep is [S, R, P] (per position of the receiver's input) or [S, R, b, P] (per prompt; a
    batch of ``g`` equal groups may share it: [S, R, b/g, P]).

    A real-valued ``keep`` that requires grad (a learned mask) is differentiated: each receiver's
    input is ``ref_resid + keep[:, r] . (current - reference)`` with the gradient flowing into ``keep``
    and, through ``current``, into earlier layers (:class:`_LearnedMix`).  A ``keep`` without grad (bool,
    0/1 or fractions) takes the usual, faster path.  ``column``, ``buffer`` and ``edit_mid`` are not
    combined with a learned ``keep``.

    ``column`` and ``column_keep`` [c, S] let one receiver's keep column differ between ``c`` equal
    groups of the batch (group ``i`` is rows ``i*b/c .. (i+1)*b/c``): group ``i`` reads receiver
    ``column``'s senders with ``column_keep[i]`` instead of ``keep[:, column]``.  ACDC uses it to
    test many candidate edges of one receiver in one pass.  With a positional ``keep``, ``column_keep`` is
    [c, S, P] or, per prompt of a group, [c, S, b/c, P].

    ``reference`` may have a batch of ``b/g`` rows: it is then shared by the ``g`` equal groups of the
    batch (a batch repeated ``g`` times needs its reference once).

    ``buffer`` [S, b, p, d], for restarted runs (``start_layer``): a preallocated tensor for
    ``current - reference`` whose rows before ``start_layer``'s heads already hold it.  The run
    writes the later rows and leaves those alone, so a caller that restarts many passes from the
    same clean run (ACDC, path patching) fills the prefix once instead of once per pass.
    """

    keep: Tensor
    reference: Tensor
    column: Optional[int] = None
    column_keep: Optional[Tensor] = None
    buffer: Optional[Tensor] = None


class RestartBuffer:
    """A ``Patch.buffer`` for many passes restarted from one clean run (ACDC, path patching).

    ``at(layer)`` gives the buffer with its rows before ``layer``'s heads holding the clean run's
    ``outputs - reference`` (repeated ``copies`` times along the batch).  A pass overwrites the rows
    from its restart layer on, so only rows an earlier pass overwrote are filled again: visiting
    layers from the last back (ACDC) fills each row once."""

    def __init__(self, graph: ComputationalGraph, outputs: Tensor, reference: Tensor, copies: int = 1):
        self.graph, self.outputs, self.reference, self.copies = graph, outputs, reference, copies
        S, b = outputs.shape[:2]
        self.buffer = torch.empty((S, copies * b, *outputs.shape[2:]), dtype=outputs.dtype, device=outputs.device)
        self.valid = 0  # rows [0, valid) hold the clean difference

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def at(self, layer: int) -> Tensor:
        n = self.graph.senders_before_heads(layer)
        if self.valid < n:
            rows = slice(self.valid, n)
            diff = self.outputs[rows] - self.reference[rows]
            self.buffer[rows] = diff if self.copies == 1 else diff.repeat(1, self.copies, 1, 1)
        self.valid = n  # the pass overwrites the later rows
        return self.buffer


@dataclass
class Trace:
    """Tensors kept from a traced forward pass, to turn their gradients into receiver gradients."""

    q: List[Tensor] = field(default_factory=list)  # per layer [b, p, H, e], pre-rotary, grad retained
    k: List[Tensor] = field(default_factory=list)  # per layer [b, p, H, e], expanded to query heads
    v: List[Tensor] = field(default_factory=list)
    mlp_in: List[Tensor] = field(default_factory=list)  # per layer normalized MLP input [b, p, d]
    ln1: List[tuple] = field(default_factory=list)  # per layer (xhat, scale) of the attention norm
    ln2: List[tuple] = field(default_factory=list)
    final_in: Optional[Tensor] = None  # normalized final residual at the answer positions [b, d] or [b, k, d]
    lnf: Optional[tuple] = None
    post_attn: List[tuple] = field(default_factory=list)  # per layer (xhat, scale) of the post-attention norm
    qk_full: List[tuple] = field(default_factory=list)  # per layer q [b, p, H, e], k [b, p, K, e] before a whole-projection norm
    rules: Optional[BackwardRules] = None  # the propagation rules the backward pass follows (None: plain gradients)

    @property
    def frozen_norm(self) -> bool:
        return self.rules is not None and self.rules.freeze_norm


@dataclass(frozen=True)
class RunResult:
    logits: Tensor  # [b, V] at the answer positions ([b, k, V] for an answer_pos of [b, k])
    outputs: Optional[Tensor] = None  # [S, b, p, d] when collected
    trace: Optional[Trace] = None
    resid_pre: Optional[List[Tensor]] = None  # per layer [b, p, d], then the final residual (when asked)
    hidden: Optional[dict] = None  # layer -> MLP hidden activations [b, p, m] for ``capture_hidden`` layers


@dataclass(frozen=True)
class RunOptions:
    """What one ``GraphEngine.run`` does besides the plain forward pass.

    Attributes:
        patch: edge patching (:class:`Patch`).
        collect: return every sender's output [S, b, p, d].
        trace: keep q/k/v and normalized inputs with gradients retained (see ``receiver_grads``).
        resid0: replaces the input embedding (e.g. interpolated inputs for integrated gradients).
        start_layer, start_resid, start_outputs: resume from layer ``start_layer``'s residual input,
            with the outputs of the senders before it (from an earlier collected run; not needed when
            only patching with a ``Patch.buffer``).
        keep_resid: return each layer's residual input and the final residual (for later restarts).
        edit_mid, edit_hidden: interventions on a layer's residual stream between its attention and
            its MLP (``resid_mid``), or on its MLP hidden activations.
        capture_hidden: layers whose MLP hidden activations are returned (grad retained when tracing).
        rules: with ``trace``, propagation rules for the backward pass (:class:`circuits.engine.rules.BackwardRules`:
            GIM's, RelP's); the forward values are unchanged.
    """

    patch: Optional[Patch] = None
    collect: bool = False
    trace: bool = False
    resid0: Optional[Tensor] = None
    start_layer: int = 0
    start_resid: Optional[Tensor] = None
    start_outputs: Optional[Tensor] = None
    keep_resid: bool = False
    edit_mid: Optional[ResidEdit] = None
    edit_hidden: Optional[PostEdit] = None
    capture_hidden: tuple = ()
    rules: Optional[BackwardRules] = None


@dataclass
class KVState:
    """Every head's keys (rotated) and values at the positions run so far: per layer [b, p, H, e]."""

    k: List[Tensor]
    v: List[Tensor]

    @property
    def length(self) -> int:
        return int(self.k[0].shape[1])


@dataclass
class Positions:
    """What ``GraphEngine.extend`` returns: logits [B, V] at the last new position, the state extended
    by the new positions (when asked) and the senders' outputs there [S, B, q, d] (when collected)."""

    logits: Tensor
    state: Optional[KVState] = None
    outputs: Optional[Tensor] = None


class _Cache:
    """Attention for ``extend``: new positions after the cached ones of ``state`` (row ``i`` continues
    cached row ``rows[i]``), keeping the extended keys and values when asked."""

    def __init__(self, state: Optional[KVState], rows: Optional[Tensor], keep: bool, device):
        self.state, self.keep = state, keep
        self.start = 0 if state is None else state.length
        self.rows = None if state is None else (torch.arange(state.k[0].shape[0]) if rows is None else rows).to(device)
        self.k: List[Tensor] = []
        self.v: List[Tensor] = []

    def attend(self, engine: "GraphEngine", layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k = engine._rotate(q, self.start, layer), engine._rotate(k, self.start, layer)
        if self.state is not None:
            k = torch.cat([self.state.k[layer][self.rows], k], 1)
            v = torch.cat([self.state.v[layer][self.rows], v], 1)
        if self.keep:
            self.k.append(k), self.v.append(v)
        return engine._attention(layer, q, k, v, self.start)


class _Pass:
    """The state of one ``run``: its options, the senders' outputs and differences recorded so far, the
    reference residual, the trace, kept residuals and captured hidden activations."""

    def __init__(self, engine: "GraphEngine", shape: tuple, options: RunOptions, cache: Optional["_Cache"] = None):
        w, g = engine.w, engine.graph
        self.engine, self.options, self.cache = engine, options, cache
        b, p = shape
        full = (g.n_senders, b, p, w.d_model)
        self.outs = torch.zeros(full, dtype=w.W_E.dtype, device=engine.device) if options.collect else None
        self.diff, self.groups, self.ref_resid = None, 1, None
        patch = options.patch
        if patch is not None:
            self.groups = _groups(b, patch.reference.shape[1])
            # every row of diff is written before it is read (a receiver reads only earlier senders)
            self.diff = patch.buffer if patch.buffer is not None else torch.empty(full, dtype=w.W_E.dtype, device=engine.device)
            # the residual stream made of reference outputs (plus biases), summed when first needed
            self.ref_resid = _ReferenceResidual(g, w.b_O, patch.reference, self.groups)
        # a learned (differentiable) keep: the senders' outputs with their autograd history, block by block
        self.live: Optional[List[Tensor]] = None
        if patch is not None and patch.keep.requires_grad:
            if patch.column is not None or patch.buffer is not None or options.edit_mid is not None or options.start_layer:
                raise ValueError("a learned keep (requires_grad) cannot be combined with column, buffer, edit_mid or restarts")
            if w.attn_post_w is not None:
                raise CircuitsError("learned masks (edge-pruning, ugs) do not run on post-norm models (OLMo 2, Gemma) yet; "
                                    "use eap-ig or activation-patching there")
            self.live = []
        self.records = self.outs is not None or self.diff is not None
        self.trace = Trace(rules=options.rules) if options.trace else None
        self.rules = options.rules or BackwardRules()
        self.resid_pre: Optional[List[Tensor]] = [] if options.keep_resid else None
        self.hiddens: dict = {}

    def start(self, tokens: Tensor) -> Tensor:
        """The residual stream the pass starts from (the embedding, or ``start_resid``), with the senders
        before it recorded."""
        o, g = self.options, self.engine.graph
        if o.start_resid is None:
            resid = self.engine.embed(tokens, 0 if self.cache is None else self.cache.start) if o.resid0 is None else o.resid0
            self.store(0, resid[None])
            return resid
        fill_diff = self.diff is not None and o.patch.buffer is None
        if self.outs is not None or fill_diff:
            self.store(0, o.start_outputs[: g.senders_before_heads(o.start_layer)], difference=fill_diff)
        return o.start_resid

    def store(self, first: int, values: Tensor, difference: bool = True) -> None:
        """Record senders' outputs (and, when patching, their difference from the reference); ``values`` keep
        their autograd history only for a learned keep (``live``)."""
        if self.live is not None:
            self.live.append(values)
        values = values.detach()
        last = first + values.shape[0]
        if self.outs is not None:
            self.outs[first:last] = values
        if self.diff is not None and difference:
            ref = self.options.patch.reference[first:last]
            if self.groups == 1:
                torch.sub(values, ref, out=self.diff[first:last])
            else:
                torch.sub(_grouped(values, self.groups), ref[:, None], out=_grouped(self.diff[first:last], self.groups))

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor, scales: Optional[tuple] = (None, None)) -> Tensor:
        """Attention of the pass's positions: causal over themselves, or after the cached ones (``scales``:
        see ``_qk_norm``; None when q and k are already normed)."""
        if scales is not None:
            q, k = self.engine._qk_norm(layer, q, k, *scales)
        if self.cache is None:
            return self.engine._attend(q, k, v, layer, temperature=self.rules.softmax_temperature)
        return self.cache.attend(self.engine, layer, q, k, v)

    def inputs(self, resid: Tensor, n_senders: int, cols: slice, defer_column: bool = False):
        """``GraphEngine._patched_inputs`` of the receivers ``cols`` reading the first ``n_senders`` senders."""
        if self.live is not None:
            return self.learned_inputs(n_senders, cols)
        if self.engine.w.attn_post_w is not None and self.options.patch is not None:
            return self.engine._post_norm_inputs(resid, self.options.patch, self.diff, n_senders, cols, self.groups)
        return GraphEngine._patched_inputs(resid, self.ref_resid, self.options.patch, self.diff, n_senders, cols,
                                           defer_column=defer_column)


    def learned_inputs(self, n_s: int, cols: slice):
        """Receivers ``cols``'s inputs under a learned keep: ``ref_resid(n_s) + keep[:n_s, cols].T @ diff[:n_s]``,
        differentiable in ``keep`` and in the senders' outputs.  Returns ``(x, split, None)`` like ``_patched_inputs``:
        [r, b, p, d] (split) for several receivers, [b, p, d] for one."""
        weights = self.options.patch.keep[:n_s, cols].to(self.diff.dtype)
        blocks, count = [], 0
        for block in self.live:  # the senders' blocks (input, each layer's heads, its MLP) in order
            if count >= n_s:
                break
            blocks.append(block)
            count += block.shape[0]
        base = self.ref_resid(n_s)
        mixed = _LearnedMix.apply(weights, self.diff[:n_s].reshape(n_s, -1), *blocks)
        x = base[None] + mixed.view(weights.shape[1], *base.shape)
        return (x[0], False, None) if weights.shape[1] == 1 else (x, True, None)


class _LearnedMix(torch.autograd.Function):
    """``keep.T @ diff`` [r, N] for receivers reading ``n_s`` senders, with ``diff`` [n_s, N] (current - reference,
    detached) in the forward and the gradient routed to ``keep`` [n_s, r] (``diff @ g.T``: EAP's product of sender
    deltas and receiver gradients) and to the senders' outputs (``keep @ g``), given as ``blocks`` (the live
    [k, b, p, d] tensors whose rows make up ``diff``).  One matrix product each way, however many blocks."""

    @staticmethod
    def forward(ctx, keep: Tensor, diff: Tensor, *blocks: Tensor) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.diff = diff  # rows of the pass's difference buffer: written once, before this read
        ctx.shapes = [b.shape for b in blocks]
        return keep.T @ diff

    @staticmethod
    def backward(ctx, grad: Tensor):
        (keep,) = ctx.saved_tensors
        grad_keep = ctx.diff @ grad.T if ctx.needs_input_grad[0] else None
        grads = [None] * len(ctx.shapes)
        if any(ctx.needs_input_grad[2:]):
            g_out = keep @ grad  # [n_s, N]
            start = 0
            for i, shape in enumerate(ctx.shapes):
                if ctx.needs_input_grad[2 + i]:
                    grads[i] = g_out[start:start + shape[0]].view(shape)
                start += shape[0]
        return (grad_keep, None, *grads)


class GraphEngine:
    """Runs a model given as ``ModelWeights`` over the ``ComputationalGraph`` of its components."""

    def __init__(self, weights: ModelWeights):
        self.w = weights
        self.graph = ComputationalGraph(weights.n_layers, weights.n_heads, parallel=weights.parallel)
        group = weights.n_heads // weights.n_kv_heads
        self.kv_of_head = torch.arange(weights.n_heads, device=weights.W_Q.device) // group

    @classmethod
    def from_model(cls, loaded, *, check: bool = True) -> "GraphEngine":
        """The engine of a loaded model.  ``check``: first refuse an architecture the engine does not
        implement (from its HF config), then one whose logits differ from the bridge's on a random prompt
        (that second check is remembered per model and code: :func:`circuits.engine.architectures.logits_checked`)."""
        from circuits.engine.architectures import check_config, logits_checked
        from circuits.models.hf_weights import hf_weights, reads_from_hf
        from circuits.models.weights import extract_weights

        bridge = loaded.bridge
        hf = getattr(bridge, "original_model", None)
        config = getattr(hf, "config", None)
        if check:
            names = [name for name, _ in hf.named_modules()] if hf is not None else None
            check_config(config, names)
        engine = cls(hf_weights(hf) if reads_from_hf(config) else extract_weights(bridge))
        if check:
            logits_checked(engine, bridge)
        return engine

    @property
    def device(self) -> torch.device:
        return self.w.W_Q.device

    # ------------------------------------------------------------------ pieces
    def embed(self, tokens: Int[Tensor, "batch pos"], start: int = 0) -> Float[Tensor, "batch pos d_model"]:
        """The ``input`` node's output [b, p, d]: token (+ learned position) embeddings, the tokens being
        at positions ``start ..``."""
        x = self.w.W_E[tokens]
        if self.w.emb_scale != 1.0:
            x = x * torch.tensor(self.w.emb_scale, dtype=x.dtype)  # rounded to the model's precision, as HF does
        if self.w.W_pos is not None:
            if start + tokens.shape[1] > self.w.W_pos.shape[0]:
                raise CircuitsError(f"the prompts need {start + tokens.shape[1]} positions but the model has only "
                                    f"{self.w.W_pos.shape[0]} (its context length); use shorter prompts")
            x = x + self.w.W_pos[start:start + tokens.shape[1]][None]
        return x

    def _norm(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], frozen: bool = False):
        """``(y, xhat, scale)`` of LayerNorm / RMSNorm; half-precision inputs are normalized in float32
        (as Hugging Face's models do) and the results given back in their precision.  ``frozen``: the
        scale is a constant for gradients (the rules' ``freeze_norm``)."""
        if weight is None:  # no norm here (OLMo 2 has none before attention and the MLP); a copy, so that a
            return x.clone(), None, None  # gradient retained on it is this input's alone
        dtype = x.dtype
        if dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        if self.w.norm == "LN":
            x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.w.eps).sqrt()
        if frozen:
            scale = scale.detach()
        xhat = x / scale
        y = xhat.to(dtype) * weight
        return (y + bias if bias is not None else y), xhat.to(dtype), scale.to(dtype)

    def norm_vjp(self, grad_y: Tensor, xhat: Tensor, scale: Tensor, weight: Tensor, frozen: bool = False) -> Tensor:
        """Gradient w.r.t. a norm's input from the gradient w.r.t. its output (the norm's Jacobian, transposed)."""
        g = grad_y * (weight / scale)
        self._finish_vjp(g.view(1, -1, 1, g.shape[-1]), xhat.reshape(-1, 1, xhat.shape[-1]), frozen)
        return g

    def _rotate(self, x: Tensor, start: int = 0, layer: int = 0) -> Tensor:
        """Rotary position embedding (HF's rotate-half layout) on [b, p, h, e] at positions ``start ..``,
        on the first ``rotary_dim`` dimensions of each head, with ``layer``'s base."""
        if self.w.rotary_base is None:
            return x
        dim = self.w.rotary_dim
        p = x.shape[1]
        base = self.w.rotary_bases[layer] if self.w.rotary_bases is not None else self.w.rotary_base
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.int64).float() / dim))
        freqs = torch.arange(start, start + p, device=x.device, dtype=torch.float32)[:, None] * inv[None]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos()[None, :, None].to(x.dtype), emb.sin()[None, :, None].to(x.dtype)
        rot, rest = x[..., :dim], x[..., dim:]
        half = torch.cat([-rot[..., dim // 2:], rot[..., : dim // 2]], -1)
        return torch.cat([rot * cos + half * sin, rest], -1)

    def _act(self, x: Tensor, identity: bool = False) -> Tensor:
        """The activation function; ``identity``: its backward is LRP's identity rule (``act(x) / x``)."""
        name = self.w.act_fn
        if identity:
            with torch.no_grad():
                y = self._act(x)
            return identity_rule(x, y, 0.0 if name == "relu" else 0.5)  # act'(0) for GELU and SiLU
        if name == "gelu_new":
            return F.gelu(x, approximate="tanh")
        if name == "gelu":
            return F.gelu(x)
        if name == "relu":
            return F.relu(x)
        return F.silu(x)

    def mlp_hidden(self, layer: int, x: Tensor, rules: Optional[BackwardRules] = None) -> Tensor:
        """The MLP's hidden activations (neurons) [b, p, m] from its normalized input (``rules``: for a traced backward)."""
        w, r = self.w, rules or BackwardRules()
        pre = x @ w.W_in[layer] + w.b_in[layer]
        if w.W_gate is not None:
            return scale_grad(self._act(x @ w.W_gate[layer], r.act_identity), r.gate_scale) * scale_grad(pre, r.up_scale)
        return self._act(pre, r.act_identity)

    def _qk_norm(self, layer: int, q: Tensor, k: Tensor, q_scale: Optional[Tensor] = None,
                 k_scale: Optional[Tensor] = None):
        """q and k [b, p, H, e] after the layer's q/k RMSNorms: per head (Qwen3, Gemma 3) or over the whole
        projection (OLMo 2; ``q_scale``/``k_scale`` [b, p, H, 1] give each head's own RMS when the heads'
        inputs differ)."""
        w = self.w
        if w.q_norm is None:
            return q, k
        if not w.qk_norm_full:
            return (self._norm(q, w.q_norm[layer], None)[0], self._norm(k, w.k_norm[layer], None)[0])
        H, e = q.shape[2], q.shape[3]
        out = []
        for t, weight, scale, n in ((q, w.q_norm[layer], q_scale, H), (k, w.k_norm[layer], k_scale, w.n_kv_heads)):
            if scale is None:  # every head from the same input: the norm over the whole projection
                flat = t if t.shape[2] == n else t[:, :, self._first_of_group()]  # k: one copy per key/value head
                scale = self._rms(flat.reshape(*t.shape[:2], -1))[..., None]
            weight = weight.view(n, e)
            out.append(t / scale * (weight if n == H else weight[self.kv_of_head]))
        return out[0], out[1]

    def _rms(self, x: Tensor) -> Tensor:
        """sqrt(mean(x^2) + eps) over the last dimension, keeping it: [..., 1]."""
        return (x.pow(2).mean(-1, keepdim=True) + self.w.eps).sqrt()

    def _first_of_group(self) -> Tensor:
        group = self.w.n_heads // self.w.n_kv_heads
        return torch.arange(0, self.w.n_heads, group, device=self.device)

    def _mask(self, layer: int, n: int, start: int, device) -> Tensor:
        """Which keys [n, start + n] each of ``n`` queries at positions ``start ..`` sees (causal, windowed)."""
        mask = torch.ones(n, start + n, dtype=torch.bool, device=device).tril(start)
        window = self.w.windows[layer] if self.w.windows is not None else None
        if window is not None:
            mask &= ~torch.ones_like(mask).tril(start - window)
        return mask

    def _probs(self, layer: int, q: Tensor, k: Tensor, start: int = 0, temperature: float = 1.0) -> Tensor:
        """Attention probabilities [b, H, n, start + n] from rotated q [b, n, H, e] and k [b, start + n, H, e]
        (``temperature``: the softmax's backward is taken at that temperature, :func:`circuits.engine.rules.softmax`)."""
        w = self.w
        scale = w.attn_scale if w.attn_scale is not None else 1.0 / math.sqrt(w.d_head)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * scale
        if w.attn_softcap is not None:
            scores = torch.tanh(scores / w.attn_softcap) * w.attn_softcap
        mask = self._mask(layer, q.shape[1], start, q.device)
        return softmax(scores.masked_fill(~mask, float("-inf")), temperature)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, layer: int = 0, temperature: float = 1.0) -> Tensor:
        """Layer ``layer``'s attention of positions ``0 ..`` on q, k, v [b, p, H, e] (after any q/k norm; k, v per
        query head): rotary, causal (windowed) softmax -> z [b, p, H, e]."""
        return self._attention(layer, self._rotate(q, 0, layer), self._rotate(k, 0, layer), v, temperature=temperature)

    def _attention(self, layer: int, q: Tensor, k: Tensor, v: Tensor, start: int = 0, temperature: float = 1.0) -> Tensor:
        """Attention of rotated q [b, n, H, e] over k, v [b, start + n, H, e] (per query head) -> z [b, n, H, e]."""
        w = self.w
        if w.attn_softcap is not None or temperature != 1.0:
            return torch.einsum("bhqk,bkhe->bqhe", self._probs(layer, q, k, start, temperature), v)
        windowed = w.windows is not None and w.windows[layer] is not None
        mask = self._mask(layer, q.shape[1], start, q.device) if (start or windowed) else None
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           is_causal=mask is None, scale=w.attn_scale)
        return z.transpose(1, 2)

    def attention_pattern(self, layer: int, resid_pre: Tensor) -> Tensor:
        """Attention probabilities [b, H, p_query, p_key] of one layer, from its residual input."""
        w = self.w
        x, _, _ = self._norm(resid_pre, None if w.ln1_w is None else w.ln1_w[layer], None if w.ln1_b is None else w.ln1_b[layer])
        q = torch.einsum("bpd,hde->bphe", x, w.W_Q[layer]) + w.b_Q[layer]
        kv = self.kv_of_head
        k = torch.einsum("bpd,hde->bphe", x, w.W_K[layer][kv]) + w.b_K[layer][kv]
        q, k = self._qk_norm(layer, q, k)
        return self._probs(layer, self._rotate(q, 0, layer), self._rotate(k, 0, layer))

    def unembed(self, resid: Tensor, answer_pos: Tensor, trace: Optional[Trace] = None) -> Tensor:
        """Logits at the answer positions from the final residual stream [b, p, d]: [b, V] for
        ``answer_pos`` [b], [b, k, V] for ``answer_pos`` [b, k]."""
        w = self.w
        last = resid[_rows(answer_pos, resid.device), answer_pos.to(resid.device)]
        y, xhat, scale = self._norm(last, w.lnf_w, w.lnf_b, frozen=trace is not None and trace.frozen_norm)
        if trace is not None:
            y.retain_grad()
            trace.final_in, trace.lnf = y, (xhat.detach(), scale.detach())
        logits = y @ w.W_U + w.b_U
        if w.final_softcap is not None:
            logits = torch.tanh(logits / w.final_softcap) * w.final_softcap
        return logits

    # ------------------------------------------------------------------ patching helpers
    @staticmethod
    def _patched_inputs(base: Tensor, ref_base: Optional[Callable[[int], Tensor]], patch: Optional[Patch], diff: Optional[Tensor],
                        n_s: int, cols: slice, defer_column: bool = False):
        """Inputs of the receivers in ``cols``: ``base`` [b,p,d] shared, or [r, b, p, d] when they differ.

        A receiver's input is ``sum_s keep*current_s + (1-keep)*reference_s`` plus the biases.  It is
        built from whichever side touches fewer senders: the current residual ``base`` minus the
        patched senders' ``diff = current - reference``, or the reference residual ``ref_base(n_s)`` plus
        the kept senders' ``diff`` (small circuits patch almost everything).

        Returns ``(x, split, column)``.  With ``defer_column``, when only ``patch.column`` differs from
        a shared input, ``x`` is that shared input and ``column`` is ``(j, x_j)``: the column's index in
        ``cols`` and its own input [b,p,d], for the caller to compute that one receiver apart.
        """
        if patch is None:
            return base, False, None
        if patch.keep.ndim > 2:
            x, split = GraphEngine._positional_inputs(base, ref_base, patch, diff, n_s, cols)
        else:
            x, split = GraphEngine._shared_inputs(base, ref_base, patch, diff, n_s, cols)
        if patch.column is None or not cols.start <= patch.column < cols.stop:
            return x, split, None
        if defer_column and not split and cols.stop - cols.start > 1:
            one = slice(patch.column, patch.column + 1)
            return x, False, (patch.column - cols.start, GraphEngine._column_inputs(x, False, patch, diff, n_s, one))
        return GraphEngine._column_inputs(x, split, patch, diff, n_s, cols), cols.stop - cols.start > 1, None

    @staticmethod
    def _positional_inputs(base: Tensor, ref_base: Callable[[int], Tensor], patch: Patch, diff: Tensor, n_s: int, cols: slice):
        """A positional keep (``[S, R, P]``, or ``[S, R, b, P]`` per prompt): each receiver's input at position
        ``p`` is ``base[p] - sum_s (1 - keep[s, r, p]) * diff[s, p]``, or, from whichever side touches fewer
        senders, ``ref_base(n_s)[p] + sum_s keep[s, r, p] * diff[s, p]``.  Returns ``(x, split)`` as ``_shared_inputs``."""
        keep = patch.keep[:n_s, cols]
        keep = (keep[:, :, None] if keep.ndim == 3 else keep).to(diff.dtype)  # [n_s, r, b or 1, p]
        drop = 1.0 - keep
        rows = drop.flatten(1).abs().sum(1) > 0
        if not bool(rows.any()):
            return base, False
        kept_rows = keep.flatten(1).abs().sum(1) > 0
        if int(kept_rows.sum()) < int(rows.sum()):  # a small circuit: add its few kept senders to the reference
            x = ref_base(n_s)[None] + _positional_mix(keep[kept_rows], diff[:n_s][kept_rows])
        else:
            x = base[None] - _positional_mix(drop[rows], diff[:n_s][rows])
        return (x[0], False) if x.shape[0] == 1 else (x, True)

    @staticmethod
    def _column_inputs(x: Tensor, split: bool, patch: Patch, diff: Tensor, n_s: int, cols: slice) -> Tensor:
        """``x`` with receiver ``patch.column``'s input changed per batch group to ``patch.column_keep``:
        the input moves by ``(column_keep - keep) * (current - reference)`` of each sender."""
        c = patch.column_keep.shape[0]
        col, own = patch.column_keep[:, :n_s].to(diff.dtype), patch.keep[:n_s, patch.column].to(diff.dtype)
        B = diff.shape[1]
        if col.ndim > 2:  # positional: [c, n_s, (b/c,) P] against the keep's [n_s, (b/c,) P]
            delta = (col if col.ndim == 4 else col[:, :, None]) - (own if own.ndim == 3 else own[:, None])[None]
            rows = delta.abs().sum((0, 2, 3)) > 0
            flat = diff[:n_s][rows].reshape(int(rows.sum()), c, B // c, *diff.shape[2:])  # [k, c, b/c, p, d]
            shift = torch.einsum("ckbp,kcbpd->cbpd", delta[:, rows].expand(-1, -1, B // c, -1), flat).reshape(B, *diff.shape[2:])
        else:
            delta = col - own[None]  # [c, n_s]
            rows = delta.abs().sum(0) > 0
            flat = diff[:n_s][rows].reshape(int(rows.sum()), c, -1)  # [k, c, b/c * p * d]
            shift = torch.einsum("ck,kcx->cx", delta[:, rows], flat).view(B, *diff.shape[2:])
        j = patch.column - cols.start
        if cols.stop - cols.start == 1:
            return (x[0] if split else x) + shift
        out = (x if split else x[None].expand(cols.stop - cols.start, *x.shape)).clone()
        out[j] += shift
        return out

    @staticmethod
    def _shared_inputs(base: Tensor, ref_base: Optional[Callable[[int], Tensor]], patch: Patch, diff: Optional[Tensor],
                       n_s: int, cols: slice):
        keep = patch.keep[:n_s, cols]  # [n_s, r]
        drop = 1.0 - keep
        drop_rows = drop.abs().sum(1) > 0
        n_drop = int(drop_rows.sum())
        if n_drop == 0:
            return base, False
        keep_rows = keep.abs().sum(1) > 0
        if int(keep_rows.sum()) < n_drop:
            start, weights, rows = ref_base(n_s), keep, keep_rows
        else:
            start, weights, rows = base, -drop, drop_rows
        k = int(rows.sum())
        if k == 0:
            return start, False
        flat = diff[:n_s].reshape(n_s, -1)
        if 2 * k < n_s:  # gather the few senders that matter
            flat, weights = flat[rows], weights[rows]
        weights = weights.to(flat.dtype)
        if bool((weights == weights[:, :1]).all()):
            return start + (weights[:, 0] @ flat).view_as(start), False
        return start[None] + (weights.T @ flat).view(weights.shape[1], *start.shape), True

    def _one_head_input(self, layer: int, column: tuple, qkv: tuple, ln1_w: Optional[Tensor], ln1_b: Optional[Tensor]) -> None:
        """In place: head ``h``'s q, k or v (receiver ``j = kind * H + h`` of the layer) from its own input."""
        j, x_in = column
        w = self.w
        kind, h = divmod(j, w.n_heads)
        x, _, _ = self._norm(x_in, ln1_w, ln1_b)
        W, bias = ((w.W_Q, w.b_Q), (w.W_K, w.b_K), (w.W_V, w.b_V))[kind]
        src = h if kind == 0 else int(self.kv_of_head[h])
        qkv[kind][:, :, h] = x @ W[layer][src] + bias[layer][src]

    # ------------------------------------------------------------------ forward
    def run(self, tokens: Int[Tensor, "batch pos"], answer_pos: Int[Tensor, "batch *answers"],
            options: Optional["RunOptions"] = None, **overrides) -> RunResult:
        """One forward pass.

        Args:
            tokens: [b, p] token ids.  answer_pos: [b] (or [b, k]) positions whose logits are returned.
            options: a :class:`RunOptions` (what to patch, collect, trace, restart from, edit); any of its
                fields may also be given as keywords (``engine.run(tokens, pos, patch=p, collect=True)``),
                and override ``options``'s.
        """
        o = replace(options, **overrides) if options is not None else RunOptions(**overrides)
        if o.rules is not None and not o.trace:
            raise ValueError("run(rules=...) changes the traced backward pass: it needs trace=True")
        if o.trace and o.patch is not None:
            # Patched layers compute q/k/v per head and keep no trace, so receiver_grads would read the
            # wrong layers: refuse rather than return wrong gradients.
            raise ValueError("run(trace=True) cannot be combined with patch: gradients are traced on unpatched runs only")
        run = _Pass(self, tokens.shape, o)
        logits = self.unembed(self._forward(run, tokens), answer_pos, run.trace)
        return RunResult(logits=logits, outputs=run.outs, trace=run.trace, resid_pre=run.resid_pre, hidden=run.hiddens or None)

    def extend(self, tokens: Tensor, state: Optional[KVState] = None, *, rows: Optional[Tensor] = None,
               patch: Optional[Patch] = None, collect: bool = False, keep_state: bool = False) -> Positions:
        """Run ``tokens`` [B, q] as the positions after ``state``'s (row ``i`` continues cached row
        ``rows[i]``; no state: the sequences start here), the same pass as ``run`` otherwise.

        A patch's ``reference`` [S, B, q, d] holds the senders' outputs at these positions in the
        reference run.  Returns the logits at the last new position, and the keys and values
        extended by the new positions when ``keep_state``: a prompt run once can then be continued
        by one token at a time at the cost of that token alone (teacher forcing)."""
        cache = _Cache(state, rows, keep_state, self.device)
        o = RunOptions(patch=patch, collect=collect)
        run = _Pass(self, tokens.shape, o, cache)
        final = self._forward(run, tokens.to(self.device))
        last = torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=self.device)
        return Positions(logits=self.unembed(final, last), state=KVState(cache.k, cache.v) if keep_state else None,
                         outputs=run.outs)

    def _forward(self, run: "_Pass", tokens: Tensor) -> Tensor:
        """The pass's layers from its start layer on; returns the logits' (patched) input, the final residual stream."""
        o = run.options
        resid = run.start(tokens)
        for layer in range(o.start_layer, self.w.n_layers):
            if run.resid_pre is not None:
                run.resid_pre.append(resid.detach())
            mid = self._attention_block(run, layer, resid)
            if o.edit_mid is not None:
                mid = o.edit_mid(layer, mid)
            resid = self._mlp_block(run, layer, resid, base=mid) if self.w.parallel else self._mlp_block(run, layer, mid)
        if run.resid_pre is not None:
            run.resid_pre.append(resid.detach())
        g = self.graph
        return run.inputs(resid, g.n_senders, slice(g.logits_receiver, g.logits_receiver + 1))[0]

    def _attention_block(self, run: "_Pass", layer: int, resid: Tensor) -> Tensor:
        """Layer ``layer``'s attention on the residual stream: its heads' q/k/v inputs (patched, per head
        where they differ), the heads' outputs recorded, the residual stream after them."""
        w, g, kv = self.w, self.graph, self.kv_of_head
        ln1_w, ln1_b = None if w.ln1_w is None else w.ln1_w[layer], None if w.ln1_b is None else w.ln1_b[layer]
        block = g.receiver_block(layer)
        x_in, split, column = run.inputs(resid, g.senders_before_heads(layer), slice(block.start, block.start + 3 * w.n_heads),
                                         defer_column=not w.qk_norm_full)
        scales = (None, None)
        if split:  # every head's q, k and v input on its own
            x, _, _ = self._norm(x_in, ln1_w, ln1_b)  # [3H, b, p, d]
            H = w.n_heads
            q = torch.einsum("hbpd,hde->bphe", x[:H], w.W_Q[layer]) + w.b_Q[layer]
            k = torch.einsum("hbpd,hde->bphe", x[H:2 * H], w.W_K[layer][kv]) + w.b_K[layer][kv]
            v = torch.einsum("hbpd,hde->bphe", x[2 * H:], w.W_V[layer][kv]) + w.b_V[layer][kv]
            if w.qk_norm_full:  # each head's q (k) normalized over the whole projection of its own input
                scales = tuple(self._rms((torch.einsum("hbpd,gde->hbpge", xs, W[layer]) + bias[layer]).flatten(-2))
                               .permute(1, 2, 0, 3) for xs, W, bias in ((x[:H], w.W_Q, w.b_Q), (x[H:2 * H], w.W_K, w.b_K)))
        else:
            x, xhat, scale = self._norm(x_in, ln1_w, ln1_b, frozen=run.trace is not None and run.trace.frozen_norm)
            q = torch.einsum("bpd,hde->bphe", x, w.W_Q[layer]) + w.b_Q[layer]
            k = (torch.einsum("bpd,hde->bphe", x, w.W_K[layer]) + w.b_K[layer])[:, :, kv]
            v = (torch.einsum("bpd,hde->bphe", x, w.W_V[layer]) + w.b_V[layer])[:, :, kv]
            if column is not None:  # one receiver's input differs: recompute only its head's q, k or v
                self._one_head_input(layer, column, (q, k, v), ln1_w, ln1_b)
            if run.trace is not None:
                if w.qk_norm_full:  # trace the normed q and k: the norm's statistics are mapped back per head
                    run.trace.qk_full.append((q.detach(), k[:, :, self._first_of_group()].detach()))
                    q, k = self._qk_norm(layer, q, k)
                    scales = None
                for t in (q, k, v):
                    t.retain_grad()
                run.trace.q.append(q), run.trace.k.append(k), run.trace.v.append(v)
                run.trace.ln1.append(_detached(xhat, scale))
                r = run.rules  # the gradients of q, k, v are scaled after the trace reads them
                q, k, v = scale_grad(q, r.q_scale), scale_grad(k, r.k_scale), scale_grad(v, r.v_scale)
        z = run.attend(layer, q, k, v, scales)
        if run.records:
            head_out = torch.einsum("bphe,hed->hbpd", z, w.W_O[layer])
            run.store(g.head_sender(layer, 0), head_out)
            attn = head_out.sum(0)
        else:
            attn = torch.einsum("bphe,hed->bpd", z, w.W_O[layer])
        if w.attn_post_w is None:
            return resid + attn + w.b_O[layer]  # this order: the reference residual sums the same way, bit for bit
        # a post-norm: the heads' outputs enter the residual stream through it
        attn, xhat, scale = self._norm(attn + w.b_O[layer], w.attn_post_w[layer], None)
        if run.trace is not None:
            run.trace.post_attn.append(_detached(xhat, scale))
        return resid + attn

    def _mlp_block(self, run: "_Pass", layer: int, resid: Tensor, base: Optional[Tensor] = None) -> Tensor:
        """Layer ``layer``'s MLP on the residual stream ``resid`` (its input patched, hidden activations edited
        or captured as asked), its output recorded, the residual stream after it (its output added to
        ``base`` when given: a parallel layer's MLP reads the layer's input, not the attention's output)."""
        w, g, o = self.w, self.graph, run.options
        mlp_r = g.mlp_receiver(layer)
        x_in = run.inputs(resid, g.senders_before_mlp(layer), slice(mlp_r, mlp_r + 1))[0]
        x, xhat, scale = self._norm(x_in, None if w.ln2_w is None else w.ln2_w[layer], None if w.ln2_b is None else w.ln2_b[layer],
                                    frozen=run.trace is not None and run.trace.frozen_norm)
        if run.trace is not None:
            x.retain_grad()
            run.trace.mlp_in.append(x)
            run.trace.ln2.append(_detached(xhat, scale))
        hidden = self.mlp_hidden(layer, x, o.rules)
        if o.edit_hidden is not None:
            hidden = o.edit_hidden(layer, hidden)
        if layer in o.capture_hidden:
            if run.trace is not None and hidden.requires_grad:
                hidden.retain_grad()
            run.hiddens[layer] = hidden
        mlp_out = hidden @ w.W_out[layer] + w.b_out[layer]
        if w.mlp_post_w is not None:  # one sender's own norm: part of its output
            mlp_out = self._norm(mlp_out, w.mlp_post_w[layer], None)[0]
        run.store(g.mlp_sender(layer), mlp_out[None])
        return (resid if base is None else base) + mlp_out

    # ------------------------------------------------------------------ gradients
    def receiver_grads(self, trace: Trace, layer: int) -> Tensor:
        """After ``backward``: d metric / d input for the receivers of ``layer`` -> [3H + 1, b, p, d].

        Each head's q/k/v gradient is projected back through its weights with the norm's
        weight and 1/scale folded in, then the norm's Jacobian is finished in place
        (``_finish_vjp``): no per-head copies of the residual stream are made before this point.
        """
        w = self.w
        i = layer - self._first_traced(trace)
        xhat, scale = trace.ln1[i]
        b, p = trace.q[i].shape[:2]
        d = w.d_model
        H, n = w.n_heads, b * p
        kv = self.kv_of_head
        out = torch.empty(3 * H + 1, b, p, d, dtype=trace.q[i].dtype, device=trace.q[i].device)
        normed = xhat is not None  # OLMo 2 has no norm before attention and the MLP
        inv = (1.0 / scale)[..., None] if normed else None  # [b, p, 1, 1]
        norm_w = w.ln1_w[layer][None, :, None] if normed else None
        grads = [trace.q[i].grad, trace.k[i].grad, trace.v[i].grad]
        stats = self._full_norm_grads(trace, layer, grads) if w.qk_norm_full else None
        for j, (t, W) in enumerate(((grads[0], w.W_Q[layer]), (grads[1], w.W_K[layer][kv]), (grads[2], w.W_V[layer][kv]))):
            g = (t * inv if normed else t).permute(2, 0, 1, 3).reshape(H, n, -1)  # [H, n, e]
            torch.bmm(g, (W * norm_w if normed else W).transpose(1, 2), out=out[j * H:(j + 1) * H].view(H, n, d))
            if stats is not None and j < 2:  # each head's share of its norm's statistics
                out[j * H:(j + 1) * H] += stats[j] * (w.ln1_w[layer] / scale if normed else 1.0)
        if normed:
            self._finish_vjp(out[:3 * H], xhat, trace.frozen_norm)
        xhat2, scale2 = trace.ln2[i]
        if xhat2 is None:
            out[3 * H] = trace.mlp_in[i].grad
        else:
            torch.mul(trace.mlp_in[i].grad, w.ln2_w[layer] / scale2, out=out[3 * H])
            self._finish_vjp(out[3 * H:], xhat2, trace.frozen_norm)
        return out

    def _full_norm_grads(self, trace: Trace, layer: int, grads: list) -> tuple:
        """For q/k norms over the whole projection (OLMo 2): turns ``grads[0:2]`` (w.r.t. the normed q, k
        [b, p, H, e]) into gradients w.r.t. each head's projection, in place, and returns each head's gradient
        through the norm's statistics, w.r.t. its input [H, b, p, d] (q, then k).

        Head ``h`` reads ``y_h = w_h q_h / s(q)`` with ``s`` the RMS of the whole projection of its own input, so
        ``dM/dx_h = W_h (w_h G_h / s) - (sum_e w_h G_h q_h) / (N s^3) * sum_g W_g q_g``."""
        w = self.w
        i = layer - self._first_traced(trace)
        out = []
        for j, (pre, weight, W) in enumerate(zip(trace.qk_full[i], (w.q_norm[layer], w.k_norm[layer]),
                                                 (w.W_Q[layer], w.W_K[layer]))):
            n_heads, e = pre.shape[2], pre.shape[3]
            s = self._rms(pre.flatten(-2))[..., None]  # [b, p, 1, 1]
            wv = weight.view(n_heads, e)
            mine = (pre, wv) if j == 0 else (pre[:, :, self.kv_of_head], wv[self.kv_of_head])  # per query head
            G = grads[j] * mine[1]
            c = (G * mine[0]).sum(-1) / (n_heads * e * s[..., 0] ** 3)  # [b, p, H]
            grads[j] = G / s
            P = torch.einsum("bpge,gde->bpd", pre, W)
            out.append(-c.permute(2, 0, 1)[..., None] * P[None])
        return out[0], out[1]

    def sender_deltas(self, trace: Trace, delta: Tensor) -> Tensor:
        """The senders' changes ``delta`` [S, b, p, d] as they reach the residual stream, to first order: a head
        behind a post-attention norm moves it by the norm's Jacobian (at the traced run) times its change.
        ``delta`` itself when the model has no post-attention norm."""
        w, g = self.w, self.graph
        if w.attn_post_w is None:
            return delta
        out = delta.clone()
        first = self._first_traced(trace)
        for i, (xhat, scale) in enumerate(trace.post_attn):
            layer = first + i
            rows = slice(g.head_sender(layer, 0), g.head_sender(layer, 0) + w.n_heads)
            out[rows] = self._rms_jvp(delta[rows], xhat, scale, w.attn_post_w[layer])
        return out

    @staticmethod
    def _rms_jvp(dx: Tensor, xhat: Tensor, scale: Tensor, weight: Tensor) -> Tensor:
        """An RMSNorm's Jacobian (at ``xhat``, ``scale``) times ``dx`` [..., b, p, d]."""
        return (dx - xhat * (dx * xhat).mean(-1, keepdim=True)) * (weight / scale)

    def node_shift(self, s: int, outputs: Tensor, reference: Tensor) -> Tensor:
        """How the residual stream moves [b, p, d] where sender ``s``'s output enters it, when that output takes
        its ``reference`` value (``outputs``, ``reference`` [S, b, p, d]): the difference, or for a head behind
        a post-attention norm, that norm recomputed with the head changed."""
        w, g = self.w, self.graph
        delta = reference[s] - outputs[s]
        if w.attn_post_w is None or s == 0 or s == g.mlp_sender(g.sender_layer(s)):
            return delta
        layer = g.sender_layer(s)
        first = g.head_sender(layer, 0)
        attn = outputs[first:first + w.n_heads].sum(0) + w.b_O[layer]
        return self._norm(attn + delta, w.attn_post_w[layer], None)[0] - self._norm(attn, w.attn_post_w[layer], None)[0]

    def residual_from(self, outputs: Tensor, layer: int) -> Tensor:
        """The residual stream [b, p, d] at ``layer``'s input (``n_layers``: the final one) that the senders'
        ``outputs`` [S, b, p, d] make, with the attention biases (and post-attention norms)."""
        w, g = self.w, self.graph
        n = g.senders_before_heads(layer) if layer < w.n_layers else g.n_senders
        if w.attn_post_w is None:
            return outputs[:n].sum(0) + w.b_O[:layer].sum(0)
        resid = outputs[0].clone()
        for l in range(layer):
            first = g.head_sender(l, 0)
            resid += self._norm(outputs[first:first + w.n_heads].sum(0) + w.b_O[l], w.attn_post_w[l], None)[0]
            resid += outputs[g.mlp_sender(l)]
        return resid

    def _post_norm_inputs(self, base: Tensor, patch: Patch, diff: Tensor, n_s: int, cols: slice, groups: int):
        """``_patched_inputs`` for a model with post-attention norms: each receiver sees its patched heads'
        reference outputs, and every post-attention norm between is recomputed on those mixed heads (the norm is
        not additive over heads: see docs/architecture.md).  Receivers with the same keep column share one input."""
        if patch.column is not None:
            from circuits.errors import CircuitsError

            raise CircuitsError("one-receiver column patches (ACDC) are not implemented for models with post-attention "
                                "norms yet; use eap, eap-ig, activation-patching or path-patching")
        w, g = self.w, self.graph
        drop = 1.0 - patch.keep[:n_s, cols].to(diff.dtype)  # [n_s, r]
        if not bool((drop != 0).any()):
            return base, False, None
        uniq, inverse = torch.unique(drop.T, dim=0, return_inverse=True)  # [u, n_s]
        linear = uniq.clone()
        layers = [l for l in range(w.n_layers) if g.head_sender(l, 0) < n_s]
        for l in layers:
            linear[:, g.head_sender(l, 0):g.head_sender(l, 0) + w.n_heads] = 0
        x = base[None] - (linear @ diff[:n_s].reshape(n_s, -1)).view(uniq.shape[0], *base.shape)
        for l in layers:
            rows = slice(g.head_sender(l, 0), g.head_sender(l, 0) + w.n_heads)
            dropped = uniq[:, rows]  # [u, H]
            if not bool((dropped != 0).any()):
                continue
            ref = patch.reference[rows]
            current = diff[rows] + (ref if groups == 1 else ref.repeat(1, groups, 1, 1))
            attn = current.sum(0) + w.b_O[l]
            mixed = attn[None] - torch.einsum("uh,hbpd->ubpd", dropped, diff[rows])
            x = x + self._norm(mixed, w.attn_post_w[l], None)[0] - self._norm(attn, w.attn_post_w[l], None)[0]
        if uniq.shape[0] == 1:
            return x[0], False, None
        return x[inverse], True, None

    def _finish_vjp(self, g: Tensor, xhat: Tensor, frozen: bool = False) -> None:
        """In place: ``g <- g - mean(g) - xhat * mean(g * xhat)`` (RMS: no mean term), for g [r, b, p, d]
        already multiplied by the norm's weight and 1/scale; completes ``norm_vjp`` for r receivers at once.
        ``frozen`` (a constant scale): ``g <- g - mean(g)`` (RMS: nothing left to do)."""
        if frozen:
            if self.w.norm == "LN":
                g.sub_(g.mean(-1, keepdim=True))
            return
        proj = torch.einsum("rbpd,bpd->rbp", g, xhat).div_(g.shape[-1])
        if self.w.norm == "LN":
            g.sub_(g.mean(-1, keepdim=True))
        g.addcmul_(xhat.unsqueeze(0), proj.unsqueeze(-1), value=-1.0)

    def _first_traced(self, trace: Trace) -> int:
        return self.w.n_layers - len(trace.q)

    def logits_grad(self, trace: Trace, answer_pos: Tensor, shape) -> Tensor:
        """d metric / d (final residual stream) [b, p, d]: non-zero at the answer positions only
        (``answer_pos`` [b] or [b, k]; a position named twice gets both gradients)."""
        xhat, scale = trace.lnf
        g = self.norm_vjp(trace.final_in.grad, xhat, scale, self.w.lnf_w, trace.frozen_norm)
        full = torch.zeros(shape, dtype=g.dtype, device=g.device)
        pos = answer_pos.to(g.device)
        full.index_put_((_rows(pos, g.device).expand_as(pos), pos), g, accumulate=True)
        return full


class _ReferenceResidual:
    """``self(n)``: the residual stream the first ``n`` senders' reference outputs make, with the attention
    biases of the layers whose heads are among them, for the whole batch.  Summed incrementally and only
    when asked for (only circuits that keep fewer senders than they patch read it)."""

    def __init__(self, graph: ComputationalGraph, b_O: Tensor, reference: Tensor, groups: int):
        self.g, self.b_O, self.reference, self.groups = graph, b_O, reference, groups
        self.n, self.value = 0, None

    def __call__(self, n: int) -> Tensor:
        if n < self.n:
            raise ValueError("the reference residual is built forwards only")
        g, ref = self.g, self.reference
        while self.n < n:  # sender block by block, in the order the residual stream itself is summed
            if self.n == 0:
                self.value, self.n = ref[0], 1
                continue
            layer, offset = divmod(self.n - 1, g.n_heads + 1)
            if offset == 0:  # the layer's heads, then its attention bias
                self.value = self.value + ref[self.n:self.n + g.n_heads].sum(0) + self.b_O[layer]
                self.n += g.n_heads
            else:  # its MLP
                self.value = self.value + ref[self.n]
                self.n += 1
        return _ungrouped(self.value, self.groups)


def _positional_mix(weights: Tensor, diff: Tensor) -> Tensor:
    """``sum_s weights[s, r, b, p] * diff[s, b, p]`` [r, B, p, d] for ``weights`` [k, r, 1 or b, p] and ``diff``
    [k, B, p, d] with ``B`` a multiple of ``b`` (a keep per prompt shared by the batch's equal groups)."""
    k, B = diff.shape[:2]
    b = weights.shape[2]
    if b in (1, B):
        return torch.einsum("srbp,sbpd->rbpd", weights.expand(-1, -1, B, -1), diff)
    grouped = diff.reshape(k, B // b, b, *diff.shape[2:])
    return torch.einsum("srbp,sgbpd->rgbpd", weights, grouped).reshape(weights.shape[1], B, *diff.shape[2:])


def _detached(xhat: Optional[Tensor], scale: Optional[Tensor]) -> tuple:
    return (None, None) if xhat is None else (xhat.detach(), scale.detach())


def _groups(batch: int, ref_batch: int) -> int:
    """How many equal groups of the batch share a reference of ``ref_batch`` rows."""
    if ref_batch <= 0 or batch % ref_batch:
        raise ValueError(f"a patch reference of {ref_batch} rows cannot serve a batch of {batch}")
    return batch // ref_batch


def _grouped(x: Tensor, groups: int) -> Tensor:
    """[k, g*r, ...] -> [k, g, r, ...] (a view of a contiguous ``x``)."""
    return x.reshape(x.shape[0], groups, x.shape[1] // groups, *x.shape[2:])


def _ungrouped(x: Tensor, groups: int) -> Tensor:
    """A per-group tensor [r, ...] repeated for the ``groups`` groups of the batch: [g*r, ...]."""
    return x if groups == 1 else x.repeat(groups, *([1] * (x.ndim - 1)))


def _rows(answer_pos: Tensor, device) -> Tensor:
    """Row indices that broadcast against ``answer_pos`` [b] or [b, k]."""
    rows = torch.arange(answer_pos.shape[0], device=device)
    return rows if answer_pos.ndim == 1 else rows[:, None]
