"""``tokens -> logits`` through the graph engine, optionally for a circuit alone, with cheap teacher forcing.

:class:`EngineForward` is a ``forward`` callable for ``GreaterThan.year_probabilities`` (and
any task that calls ``forward(prompts)`` and then ``forward(prompts + one token)``):

- **patching**: with a keep mask, every edge outside the circuit carries the corrupted run's
  value.  A prompt's corrupted twin comes from the dataset; a teacher-forced sequence
  (prompt + one token) has the corrupted prompt + the same token as its twin.
- **prefix cache**: a forced sequence differs from its prompt only at the new last position,
  and attention is causal, so every sender's output at the prompt's positions is the prompt
  run's.  The new position is computed alone against the prompt run's keys and values
  (:func:`extend`), once for the corrupted twins (their outputs are the references) and once
  for the patched clean sequences.  That is exact (tested against full engine runs) and
  about ``seq`` times cheaper than running the forced sequences whole.

Logits come back as ``[b, seq, V]`` *views* of the last position's logits ``[b, V]``: only the
last position is computed, so only the last position (the answer position of greater-than
prompts, and the one teacher forcing reads) is meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from circuits.engine import GraphEngine, Patch
from circuits.scores import Progress, no_progress

__all__ = ["PrefixState", "prefix_state", "extend", "EngineForward"]


@dataclass
class PrefixState:
    """What a run over prompts leaves for extending them by one token.

    logits: [b, V] at the last position.  k, v: per layer [b, p, H, e], the keys (rotated) and
    values every head used, per query head.  outputs: sender outputs [S, b, p, d] (kept only
    when the prompts are references for another run).
    """

    logits: Tensor
    k: List[Tensor]
    v: List[Tensor]
    outputs: Optional[Tensor] = None


def _rotate_at(engine: GraphEngine, x: Tensor, pos: int) -> Tensor:
    """Rotary embedding of ``x`` [b, 1, h, e] at position ``pos`` (the engine's ``_rotate``, shifted)."""
    w = engine.w
    if w.rotary_base is None:
        return x
    dim = w.rotary_dim
    inv = 1.0 / (w.rotary_base ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim))
    freqs = torch.tensor([float(pos)], device=x.device)[:, None] * inv[None]
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos()[None, :, None].to(x.dtype), emb.sin()[None, :, None].to(x.dtype)
    rot, rest = x[..., :dim], x[..., dim:]
    half = torch.cat([-rot[..., dim // 2:], rot[..., : dim // 2]], -1)
    return torch.cat([rot * cos + half * sin, rest], -1)


def _qkv(engine: GraphEngine, layer: int, x_in: Tensor, split: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Pre-rotary q, k, v [b, p, H, e] from a layer's (possibly per-receiver) residual input, as ``GraphEngine.run``."""
    w = engine.w
    kv = engine.kv_of_head
    ln_w, ln_b = w.ln1_w[layer], None if w.ln1_b is None else w.ln1_b[layer]
    x, _, _ = engine._norm(x_in, ln_w, ln_b)
    if split:
        H = w.n_heads
        q = torch.einsum("hbpd,hde->bphe", x[:H], w.W_Q[layer]) + w.b_Q[layer]
        k = torch.einsum("hbpd,hde->bphe", x[H:2 * H], w.W_K[layer][kv]) + w.b_K[layer][kv]
        v = torch.einsum("hbpd,hde->bphe", x[2 * H:], w.W_V[layer][kv]) + w.b_V[layer][kv]
        return q, k, v
    q = torch.einsum("bpd,hde->bphe", x, w.W_Q[layer]) + w.b_Q[layer]
    k = (torch.einsum("bpd,hde->bphe", x, w.W_K[layer]) + w.b_K[layer])[:, :, kv]
    v = (torch.einsum("bpd,hde->bphe", x, w.W_V[layer]) + w.b_V[layer])[:, :, kv]
    return q, k, v


def _receiver_inputs(engine: GraphEngine, base: Tensor, patch: Optional[Patch], outs: Optional[Tensor], n_s: int,
                     cols: slice, n_bias: int) -> Tuple[Tensor, bool]:
    """Inputs of the receivers in ``cols`` (fed by the first ``n_s`` senders, after ``n_bias`` attention
    biases): ``base`` [b, p, d] when shared, else [r, b, p, d] (``True``), as ``GraphEngine.run`` builds them.

    ``sum_s keep * current_s + (1 - keep) * reference_s`` plus biases, summed from whichever side
    touches fewer senders: ``base`` plus the patched senders' ``reference - current``, or the
    reference residual plus the kept senders' ``current - reference`` (a small circuit keeps few).
    """
    if patch is None:
        return base, False
    keep = patch.keep[:n_s, cols]
    drop = 1.0 - keep
    drop_rows = drop.abs().sum(1) > 0
    n_drop = int(drop_rows.sum())
    if n_drop == 0:
        return base, False
    keep_rows = keep.abs().sum(1) > 0
    if int(keep_rows.sum()) < n_drop:
        start = patch.reference[:n_s].sum(0) + engine.w.b_O[:n_bias].sum(0)
        rows, weights = keep_rows, keep
        delta = outs[:n_s][rows] - patch.reference[:n_s][rows]
    else:
        start, rows, weights = base, drop_rows, drop
        delta = patch.reference[:n_s][rows] - outs[:n_s][rows]
    if not bool(rows.any()):
        return start, False
    weights = weights[rows].to(delta.dtype)
    if bool((weights == weights[:, :1]).all()):
        return start + torch.einsum("kbpd,k->bpd", delta, weights[:, 0]), False
    return start[None] + torch.einsum("kbpd,kr->rbpd", delta, weights), True


def _head_cols(engine: GraphEngine, layer: int) -> slice:
    block = engine.graph.receiver_block(layer)
    return slice(block.start, block.start + 3 * engine.w.n_heads)


def prefix_state(engine: GraphEngine, tokens: Tensor, *, patch: Optional[Patch] = None,
                 keep_outputs: bool = False) -> PrefixState:
    """Run prompts [b, p] (patched when ``patch`` is given) and keep each layer's keys and values."""
    g = engine.graph
    b, p = tokens.shape
    answer = torch.full((b,), p - 1, dtype=torch.long)
    run = engine.run(tokens, answer, patch=patch, collect=True, keep_resid=True)
    ks, vs = [], []
    for layer in range(engine.w.n_layers):
        x_in, split = _receiver_inputs(engine, run.resid_pre[layer], patch, run.outputs,
                                       g.senders_before_heads(layer), _head_cols(engine, layer), layer)
        _, k, v = _qkv(engine, layer, x_in, split)
        ks.append(engine._rotate(k))
        vs.append(v)
    return PrefixState(logits=run.logits, k=ks, v=vs, outputs=run.outputs if keep_outputs else None)


def extend(engine: GraphEngine, state: PrefixState, rows: Tensor, new_tokens: Tensor, *,
           keep: Optional[Tensor] = None, reference: Optional[Tensor] = None,
           collect: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """Logits [B, V] of one more token after prompts of ``state``: row ``i`` appends ``new_tokens[i]``
    to prompt ``rows[i]``.

    With ``keep`` [S, R], edges outside it carry ``reference`` [S, B, d], the senders' outputs at
    the new position of the reference sequences (from ``extend(..., collect=True)`` on the
    corrupted prompts).  Returns (logits, outputs [S, B, d] at the new position when ``collect``).
    """
    w, g = engine.w, engine.graph
    B = int(new_tokens.shape[0])
    pos = int(state.k[0].shape[1])
    rows = rows.to(engine.device)
    resid = w.W_E[new_tokens.to(engine.device)][:, None, :]  # [B, 1, d]
    if w.W_pos is not None:
        resid = resid + w.W_pos[pos]
    patch = None
    if keep is not None:
        patch = Patch(keep=keep, reference=reference[:, :, None, :])
    outs = None
    if collect or patch is not None:
        outs = torch.zeros(g.n_senders, B, 1, w.d_model, dtype=w.W_E.dtype, device=engine.device)
        outs[0] = resid
    scale = w.d_head ** -0.5
    for layer in range(w.n_layers):
        x_in, split = _receiver_inputs(engine, resid, patch, outs, g.senders_before_heads(layer),
                                       _head_cols(engine, layer), layer)
        q, k, v = _qkv(engine, layer, x_in, split)  # [B, 1, H, e]
        q, k = _rotate_at(engine, q, pos), _rotate_at(engine, k, pos)
        keys = torch.cat([state.k[layer][rows], k], 1)  # [B, pos + 1, H, e]
        values = torch.cat([state.v[layer][rows], v], 1)
        attn = (torch.einsum("bqhe,bkhe->bhqk", q, keys) * scale).softmax(-1)  # [B, H, 1, pos + 1]
        z = torch.einsum("bhqk,bkhe->bqhe", attn, values)
        head_out = torch.einsum("bphe,hed->hbpd", z, w.W_O[layer])
        if outs is not None:
            start = g.head_sender(layer, 0)
            outs[start:start + w.n_heads] = head_out
        resid = resid + head_out.sum(0) + w.b_O[layer]
        mlp_r = g.mlp_receiver(layer)
        x_in, _ = _receiver_inputs(engine, resid, patch, outs, g.senders_before_mlp(layer), slice(mlp_r, mlp_r + 1),
                                   layer + 1)
        x, _, _ = engine._norm(x_in, w.ln2_w[layer], None if w.ln2_b is None else w.ln2_b[layer])
        mlp_out = engine.mlp_hidden(layer, x) @ w.W_out[layer] + w.b_out[layer]
        if outs is not None:
            outs[g.mlp_sender(layer)] = mlp_out
        resid = resid + mlp_out
    final, _ = _receiver_inputs(engine, resid, patch, outs, g.n_senders, slice(g.logits_receiver, g.logits_receiver + 1),
                                w.n_layers)
    logits = engine.unembed(final, torch.zeros(B, dtype=torch.long, device=engine.device))
    return logits, (outs[:, :, 0] if collect else None)


class EngineForward:
    """``forward(tokens) -> logits [b, seq, V]`` (last position only; see the module docstring).

    Args:
        engine: the graph engine.  dataset: the prompts (their corrupted twins are looked up by the
            clean prompt's tokens).  keep: the circuit's keep mask [S, R] (None: the full model).
        progress: ``(done, total, message)``; ``total`` is the number of prompts, counted once
            when the prompts are run (teacher-forced calls count no further).
        max_rows: forced sequences extended per step (bounds memory).
    """

    def __init__(self, engine: GraphEngine, dataset, keep: Optional[Tensor] = None, *,
                 progress: Optional[Progress] = None, message: str = "year probabilities", max_rows: int = 256):
        self.engine = engine
        self.keep = None if keep is None else torch.as_tensor(keep).to(device=engine.device, dtype=engine.w.W_E.dtype)
        self.seq = int(dataset.clean.shape[1])
        if not bool((torch.as_tensor(dataset.answer_pos) == self.seq - 1).all()):
            raise ValueError("EngineForward computes the last position only: the answer must be each prompt's last token")
        self.twins: Dict[tuple, Tensor] = {tuple(c.tolist()): k for c, k in zip(dataset.clean, dataset.corrupted)}
        self.progress = progress or no_progress
        self.message = message
        self.total = len(dataset)
        self.done = 0
        self.max_rows = max_rows
        self._prompts: Optional[Tensor] = None
        self._clean: Optional[PrefixState] = None
        self._ref: Optional[PrefixState] = None

    def _twin(self, prompt: Tensor) -> Tensor:
        key = tuple(prompt.tolist())
        if key not in self.twins:
            raise KeyError("a prompt that is not in the dataset: its corrupted twin is unknown")
        return self.twins[key]

    def _run_prompts(self, prompts: Tensor) -> None:
        engine = self.engine
        with torch.no_grad():
            tokens = prompts.to(engine.device)
            if self.keep is None:
                self._ref = None
                self._clean = prefix_state(engine, tokens)
            else:
                corrupted = torch.stack([self._twin(row) for row in prompts]).to(engine.device)
                self._ref = prefix_state(engine, corrupted, keep_outputs=True)
                patch = Patch(keep=self.keep, reference=self._ref.outputs)
                self._clean = prefix_state(engine, tokens, patch=patch)
                self._ref.outputs = None
        self._prompts = prompts.cpu()

    def __call__(self, tokens: Tensor) -> Tensor:
        tokens = torch.as_tensor(tokens).cpu()
        b, length = tokens.shape
        if length == self.seq:
            self._run_prompts(tokens)
            self.done = min(self.total, self.done + b)
            self.progress(self.done, self.total, self.message)
            logits = self._clean.logits.cpu()
            return logits[:, None, :].expand(b, length, logits.shape[-1])
        if length != self.seq + 1:
            raise ValueError(f"EngineForward takes prompts of length {self.seq} or prompts plus one token (got {length})")
        prefixes, rows = torch.unique(tokens[:, :-1], dim=0, return_inverse=True)
        if self._prompts is None or not self._same_prompts(prefixes):
            self._run_prompts(prefixes)
            index = rows
        else:
            index = self._index_in_prompts(tokens[:, :-1])
        out = []
        with torch.no_grad():
            for start in range(0, b, self.max_rows):
                sl = slice(start, start + self.max_rows)
                if self.keep is None:
                    logits, _ = extend(self.engine, self._clean, index[sl], tokens[sl, -1])
                else:
                    _, ref = extend(self.engine, self._ref, index[sl], tokens[sl, -1], collect=True)
                    logits, _ = extend(self.engine, self._clean, index[sl], tokens[sl, -1], keep=self.keep, reference=ref)
                out.append(logits.cpu())
        logits = torch.cat(out)
        return logits[:, None, :].expand(b, length, logits.shape[-1])

    def _same_prompts(self, prefixes: Tensor) -> bool:
        known = {tuple(r.tolist()) for r in self._prompts}
        return all(tuple(r.tolist()) in known for r in prefixes)

    def _index_in_prompts(self, prefixes: Tensor) -> Tensor:
        where = {}
        for i, r in enumerate(self._prompts):
            where.setdefault(tuple(r.tolist()), i)
        return torch.tensor([where[tuple(r.tolist())] for r in prefixes], dtype=torch.long)
