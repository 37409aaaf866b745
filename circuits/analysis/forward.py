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

:func:`forward_positions` is ``GraphEngine.extend``: the engine's own pass (the same attention
and MLP steps as ``GraphEngine.run``) over new positions after cached ones; the tests hold it to
``GraphEngine.run`` on whole sequences (GPT-2 and Llama families, random masks).  Logits come back as ``[b, seq, V]`` *views* of the last position's logits ``[b, V]``:
only the last position (greater-than's answer position, and the one teacher forcing reads) is
meaningful.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import Tensor

from circuits.engine.engine import GraphEngine, KVState, Patch, Positions
from circuits.methods.base import Progress, no_progress

__all__ = ["KVState", "Positions", "forward_positions", "EngineForward"]


def forward_positions(engine: GraphEngine, tokens: Tensor, *, state: Optional[KVState] = None,
                      rows: Optional[Tensor] = None, keep: Optional[Tensor] = None, reference: Optional[Tensor] = None,
                      keep_state: bool = False, collect: bool = False) -> Positions:
    """``GraphEngine.extend`` with a keep mask [S, R]: every edge outside it carries ``reference``
    [S, B, q, d] (the senders' outputs at these positions in the reference run)."""
    patch = None
    if keep is not None:
        patch = Patch(keep=keep.to(device=engine.device, dtype=engine.w.W_E.dtype), reference=reference)
    return engine.extend(tokens, state, rows=rows, patch=patch, collect=collect, keep_state=keep_state)


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
