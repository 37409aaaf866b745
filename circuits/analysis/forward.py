"""``tokens -> logits`` for a circuit alone (or the full model), with cheap teacher forcing.

:class:`EngineForward` is a ``forward`` callable for ``GreaterThan.year_probabilities`` (and
any task that calls ``forward(prompts)`` and then ``forward(prompts + one token)``):

- **patching**: with a keep mask, every edge outside the circuit carries the corrupted run's
  value, as ``GraphEngine.run(patch=...)`` does.  A prompt's corrupted twin comes from the
  dataset; a teacher-forced sequence (prompt + one token) has the corrupted prompt + the same
  token as its twin.
- **key/value cache**: a forced sequence differs from its prompt only at the new last
  position, and attention is causal, so every sender's output at the prompt's positions is the
  prompt run's.  :func:`forward_positions` runs the prompts once, keeping every head's keys and
  values, then computes only the new position (once for the corrupted twins, whose outputs are
  the references, and once for the patched clean sequences) — about ``seq`` times cheaper than
  running the forced sequences whole.

:func:`forward_positions` is the graph engine's forward pass (``GraphEngine.run``) written for
new positions after cached ones; it reuses the engine's patched inputs, norm, rotary, MLP and
unembedding, and
the tests hold it to ``GraphEngine.run`` on whole sequences (GPT-2 and Llama families, random
masks).  Logits come back as ``[b, seq, V]`` *views* of the last position's logits ``[b, V]``:
only the last position (greater-than's answer position, and the one teacher forcing reads) is
meaningful.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import Tensor

from circuits.engine import GraphEngine, Patch
from circuits.scores import Progress, no_progress

__all__ = ["KVState", "Positions", "forward_positions", "EngineForward"]


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
    """What :func:`forward_positions` returns: logits [B, V] at the last new position, the state
    extended by the new positions (when asked) and the senders' outputs there [S, B, q, d] (when collected)."""

    logits: Tensor
    state: Optional[KVState] = None
    outputs: Optional[Tensor] = None


def forward_positions(engine: GraphEngine, tokens: Tensor, *, state: Optional[KVState] = None,
                      rows: Optional[Tensor] = None, keep: Optional[Tensor] = None, reference: Optional[Tensor] = None,
                      keep_state: bool = False, collect: bool = False) -> Positions:
    """Run ``tokens`` [B, q] as the positions after ``state``'s (row ``i`` continues cached row ``rows[i]``;
    no state: the sequences start here).

    With ``keep`` [S, R], every edge outside it carries ``reference`` [S, B, q, d] (the senders'
    outputs at these positions in the reference run) instead of the current value.
    """
    w, g = engine.w, engine.graph
    B, q = tokens.shape
    dev, dtype = engine.device, w.W_E.dtype
    start = 0 if state is None else state.length
    if state is not None:
        rows = torch.arange(B) if rows is None else rows
        rows = rows.to(dev)
    resid = w.W_E[tokens.to(dev)]
    if w.W_pos is not None:
        resid = resid + w.W_pos[start:start + q]
    shape = (g.n_senders, B, q, w.d_model)
    outs = torch.zeros(shape, dtype=dtype, device=dev) if collect else None
    diff = ref_resid = patch = None
    if keep is not None:
        patch = Patch(keep=keep.to(device=dev, dtype=dtype), reference=reference)
        diff = torch.zeros(shape, dtype=dtype, device=dev)
        ref_resid = reference[0]

    def store(first: int, values: Tensor) -> None:
        last = first + values.shape[0]
        if outs is not None:
            outs[first:last] = values
        if diff is not None:
            torch.sub(values, reference[first:last], out=diff[first:last])

    store(0, resid[None])

    def reference_resid(n_senders: int) -> Tensor:  # summed below as the layers go, always up to n_senders
        return ref_resid

    kv = engine.kv_of_head
    patched_inputs = GraphEngine._patched_inputs
    H = w.n_heads
    mask = torch.ones(q, start + q, dtype=torch.bool, device=dev).tril(start)
    new_k: List[Tensor] = []
    new_v: List[Tensor] = []
    for layer in range(w.n_layers):
        block = g.receiver_block(layer)
        x_in, split, _ = patched_inputs(resid, reference_resid, patch, diff, g.senders_before_heads(layer),
                              slice(block.start, block.start + 3 * H))
        x, _, _ = engine._norm(x_in, w.ln1_w[layer], None if w.ln1_b is None else w.ln1_b[layer])
        if split:
            qh = torch.einsum("hbpd,hde->bphe", x[:H], w.W_Q[layer]) + w.b_Q[layer]
            kh = torch.einsum("hbpd,hde->bphe", x[H:2 * H], w.W_K[layer][kv]) + w.b_K[layer][kv]
            vh = torch.einsum("hbpd,hde->bphe", x[2 * H:], w.W_V[layer][kv]) + w.b_V[layer][kv]
        else:
            qh = torch.einsum("bpd,hde->bphe", x, w.W_Q[layer]) + w.b_Q[layer]
            kh = (torch.einsum("bpd,hde->bphe", x, w.W_K[layer]) + w.b_K[layer])[:, :, kv]
            vh = (torch.einsum("bpd,hde->bphe", x, w.W_V[layer]) + w.b_V[layer])[:, :, kv]
        qh, kh = engine._rotate(qh, start), engine._rotate(kh, start)
        keys, values = kh, vh
        if state is not None:
            keys = torch.cat([state.k[layer][rows], kh], 1)
            values = torch.cat([state.v[layer][rows], vh], 1)
        if keep_state:
            new_k.append(keys)
            new_v.append(values)
        scores = torch.einsum("bqhe,bkhe->bhqk", qh, keys) * (w.d_head ** -0.5)
        attn = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        z = torch.einsum("bhqk,bkhe->bqhe", attn, values)
        head_out = torch.einsum("bphe,hed->hbpd", z, w.W_O[layer])
        store(g.head_sender(layer, 0), head_out)
        resid = resid + head_out.sum(0) + w.b_O[layer]
        if ref_resid is not None:
            first = g.head_sender(layer, 0)
            ref_resid = ref_resid + reference[first:first + H].sum(0) + w.b_O[layer]
        mlp_r = g.mlp_receiver(layer)
        x_in, _, _ = patched_inputs(resid, reference_resid, patch, diff, g.senders_before_mlp(layer), slice(mlp_r, mlp_r + 1))
        x, _, _ = engine._norm(x_in, w.ln2_w[layer], None if w.ln2_b is None else w.ln2_b[layer])
        mlp_out = engine.mlp_hidden(layer, x) @ w.W_out[layer] + w.b_out[layer]
        store(g.mlp_sender(layer), mlp_out[None])
        resid = resid + mlp_out
        if ref_resid is not None:
            ref_resid = ref_resid + reference[g.mlp_sender(layer)]
    final, _, _ = patched_inputs(resid, reference_resid, patch, diff, g.n_senders, slice(g.logits_receiver, g.logits_receiver + 1))
    logits = engine.unembed(final, torch.full((B,), q - 1, dtype=torch.long, device=dev))
    return Positions(logits=logits, state=KVState(new_k, new_v) if keep_state else None, outputs=outs)


class EngineForward:
    """``forward(tokens) -> logits [b, seq, V]`` (last position only; see the module docstring).

    Args:
        engine: the graph engine.  dataset: the prompts (their corrupted twins are looked up by the
            clean prompt's tokens; the first answer position must be each prompt's last token;
            teacher-forced answer tokens after it are not part of the prompt).
        keep: the circuit's keep mask [S, R] (None: the full model).
        progress: ``(done, total, message)``; ``total`` is the number of prompts, counted when
            the prompts are run (teacher-forced calls count no further).
        max_rows: forced sequences computed per step (bounds memory).
    """

    def __init__(self, engine: GraphEngine, dataset, keep: Optional[Tensor] = None, *,
                 progress: Optional[Progress] = None, message: str = "year probabilities", max_rows: int = 256):
        self.engine = engine
        self.keep = None if keep is None else torch.as_tensor(keep).to(device=engine.device, dtype=engine.w.W_E.dtype)
        first = torch.as_tensor(dataset.first_answer_pos)
        self.seq = int(first.max()) + 1  # the prompts, without teacher-forced answer tokens
        if not bool((first == self.seq - 1).all()):
            raise ValueError("EngineForward computes the last position only: every prompt's first answer position "
                             "must be its last prompt token")
        self.twins: Dict[tuple, Tensor] = {tuple(c[:self.seq].tolist()): k[:self.seq]
                                           for c, k in zip(dataset.clean, dataset.corrupted)}
        self.progress = progress or no_progress
        self.message = message
        self.total = len(dataset)
        self.done = 0
        self.max_rows = max_rows
        self._prompts: Optional[Tensor] = None
        self._clean: Optional[Positions] = None
        self._ref: Optional[Positions] = None

    def _twin(self, prompt: Tensor) -> Tensor:
        key = tuple(prompt.tolist())
        if key not in self.twins:
            raise KeyError("a prompt that is not in the dataset: its corrupted twin is unknown")
        return self.twins[key]

    def _run_prompts(self, prompts: Tensor) -> None:
        engine = self.engine
        with torch.no_grad():
            if self.keep is None:
                self._ref = None
                self._clean = forward_positions(engine, prompts, keep_state=True)
            else:
                corrupted = torch.stack([self._twin(row) for row in prompts])
                self._ref = forward_positions(engine, corrupted, keep_state=True, collect=True)
                self._clean = forward_positions(engine, prompts, keep=self.keep, reference=self._ref.outputs,
                                                keep_state=True)
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
        index = self._index_in_prompts(tokens[:, :-1])
        if index is None:  # prefixes not run yet: run them now
            prefixes, index = torch.unique(tokens[:, :-1], dim=0, return_inverse=True)
            self._run_prompts(prefixes)
        out = []
        with torch.no_grad():
            for start in range(0, b, self.max_rows):
                sl = slice(start, start + self.max_rows)
                new = tokens[sl, -1:]
                if self.keep is None:
                    logits = forward_positions(self.engine, new, state=self._clean.state, rows=index[sl]).logits
                else:
                    ref = forward_positions(self.engine, new, state=self._ref.state, rows=index[sl], collect=True)
                    logits = forward_positions(self.engine, new, state=self._clean.state, rows=index[sl],
                                               keep=self.keep, reference=ref.outputs).logits
                out.append(logits.cpu())
        logits = torch.cat(out)
        return logits[:, None, :].expand(b, length, logits.shape[-1])

    def _index_in_prompts(self, prefixes: Tensor) -> Optional[Tensor]:
        """Row of each prefix among the prompts last run, or None if one of them was not run."""
        if self._prompts is None:
            return None
        where: Dict[tuple, int] = {}
        for i, r in enumerate(self._prompts):
            where.setdefault(tuple(r.tolist()), i)
        found = [where.get(tuple(r.tolist())) for r in prefixes]
        if any(i is None for i in found):
            return None
        return torch.tensor(found, dtype=torch.long)
