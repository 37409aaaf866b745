"""Writing the analysis' files atomically: PNG figures (matplotlib's Agg canvas, no pyplot) and CSV tables."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

from circuits.atomic import write_atomic

__all__ = ["figure", "save_png", "write_csv", "write_matrix_csv", "PNG_MAGIC"]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def figure(width: float, height: float, dpi: int = 110):
    """A matplotlib Figure on an Agg canvas (no global pyplot state, no display needed), constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Union[str, Path]) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return write_atomic(path, buffer.getvalue())


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def write_csv(path: Union[str, Path], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV table (floats at full precision, NaN as ``nan``), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(header))
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return write_atomic(path, buffer.getvalue())


def write_matrix_csv(path: Union[str, Path], matrix, row_label: str, row_names: Sequence[Any],
                     col_names: Sequence[Any]) -> Path:
    """A matrix as CSV: a header ``row_label, col...`` and one row per ``row_names`` entry."""
    rows = [[name, *(float(v) for v in matrix[i])] for i, name in enumerate(row_names)]
    return write_csv(path, [row_label, *[str(c) for c in col_names]], rows)
