"""Task schemas: named spans of the prompt, so prompts of different lengths share one positional graph.

A task declares its schema in the dataset it builds:

- ``PromptDataset.info["spans"]``: the span names, in prompt order (e.g. greater-than's
  ``("prefix", "noun", "from_year", "XX1", "YY", "to_year", "XX2")``);
- each prompt's ``metadata["span"]``: one span index per position of its token row (``-1``: in no
  span, e.g. right padding).

:func:`span_table` reads them as one :class:`SpanTable`.  A dataset without a schema gets one span
per position (``p0``, ``p1``, ...), which needs every prompt to end at the same position.
Positional scores and circuits are indexed by span (``[S, R, K]``); :meth:`SpanTable.positions` turns
a piece's span indices back into positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

from circuits.errors import CircuitsError

AGGREGATES = ("sum", "mean", "max")

__all__ = ["AGGREGATES", "SpanTable", "span_table", "label_positions", "check_aggregate"]


@dataclass(frozen=True)
class SpanTable:
    """The spans of a dataset: ``names`` (K, in prompt order) and ``index`` [n, p] (int64: the span of each
    position of each prompt, -1 for none).  ``schema``: False when the spans are the raw positions."""

    names: Tuple[str, ...]
    index: Any
    schema: bool = True

    @property
    def k(self) -> int:
        return len(self.names)

    def subset(self, rows) -> "SpanTable":
        return SpanTable(self.names, self.index[rows], self.schema)

    def one_hot(self, rows=slice(None), *, dtype=None, mean: bool = False):
        """[b, p, K] weights of each position in each span (1, or 1/|span| in that prompt with ``mean``)."""
        import torch

        idx = self.index[rows]
        out = torch.zeros(*idx.shape, self.k + 1, dtype=dtype or torch.float32)
        out.scatter_(2, torch.where(idx >= 0, idx, self.k)[..., None], 1.0)  # -1 goes to a dropped column
        out = out[..., : self.k]
        if mean:
            out = out / out.sum(1, keepdim=True).clamp(min=1.0)
        return out


def span_table(dataset) -> SpanTable:
    """The dataset's spans (its task's schema), or one span per position when it has none.

    Raises ``CircuitsError`` when the schema is malformed, or when there is none and the prompts
    end at different positions (their positions would not correspond)."""
    import torch

    schema = (getattr(dataset, "info", None) or {}).get("spans")
    n, p = dataset.clean.shape
    if schema:
        names = tuple(str(x) for x in schema)
        rows = []
        for i, meta in enumerate(dataset.metadata):
            labels = meta.get("span") if isinstance(meta, dict) else None
            if labels is None or len(labels) != p:
                raise CircuitsError(f"{dataset.task}: prompt {i} has no span label for each of its {p} positions "
                                    f"(metadata['span']); the task's schema is incomplete")
            rows.append([int(x) for x in labels])
        index = torch.tensor(rows, dtype=torch.long)
        if int(index.max()) >= len(names) or int(index.min()) < -1:
            raise CircuitsError(f"{dataset.task}: span labels must be -1 or an index of {names}")
        return SpanTable(names, index, True)
    ends = dataset.first_answer_pos
    if int(ends.min()) != int(ends.max()):
        raise CircuitsError(f"{dataset.task}: prompts end at different positions ({int(ends.min())}..{int(ends.max())}) "
                            "and the task declares no span schema; --positions needs prompts of equal length or a schema")
    return SpanTable(tuple(f"p{i}" for i in range(p)), torch.arange(p).expand(n, p).clone(), False)


def label_positions(length: int, spans: Sequence[Tuple[int, int, int]], total: int) -> List[int]:
    """Span index per position of a row of ``total`` tokens whose first ``length`` are the prompt:
    ``spans`` lists (span index, start, stop); later entries win; positions past ``length`` get -1."""
    out = [-1] * total
    for k, start, stop in spans:
        for i in range(max(0, start), min(stop, length)):
            out[i] = k
    return out


def check_aggregate(aggregate: str) -> str:
    if aggregate not in AGGREGATES:
        raise CircuitsError(f"unknown span aggregate {aggregate!r}; use one of {', '.join(AGGREGATES)}")
    return aggregate
