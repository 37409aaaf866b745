"""Execute docs/tutorial.ipynb with nbclient: ``make notebook`` and the notebook's test.

Cells tagged ``smollm2`` (the SmolLM2 section, minutes on a CPU) are left out unless
``--smollm2`` is given or ``CIRCUITS_NOTEBOOK_SMOLLM2=1`` is set.  The kernel starts in the
repository root with this interpreter's environment.  Exits 1, naming the failing cell, when
a cell raises.  ``--out FILE`` writes the executed notebook (outputs included).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
SKIP_TAG = "smollm2"
ENV_FLAG = "CIRCUITS_NOTEBOOK_SMOLLM2"


def selected(nb, *, smollm2: bool):
    """The notebook without its ``smollm2`` cells, unless ``smollm2``."""
    if not smollm2:
        nb.cells = [cell for cell in nb.cells if SKIP_TAG not in cell.get("metadata", {}).get("tags", [])]
    return nb


def run(path: Path = NOTEBOOK, *, smollm2: bool = False, timeout: int = 1800, out: Path | None = None) -> float:
    """Execute the notebook; returns the seconds it took.  Raises nbclient's CellExecutionError on a failing cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = selected(nbformat.read(path, as_version=4), smollm2=smollm2)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        if out is not None:
            nbformat.write(nb, out)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", nargs="?", type=Path, default=NOTEBOOK)
    parser.add_argument("--smollm2", action="store_true", default=os.environ.get(ENV_FLAG) == "1",
                        help=f"also run the cells tagged {SKIP_TAG} (default: ${ENV_FLAG}=1)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one cell may take")
    parser.add_argument("--out", type=Path, help="write the executed notebook here")
    args = parser.parse_args(argv)
    from nbclient.exceptions import CellExecutionError

    try:
        seconds = run(args.notebook, smollm2=args.smollm2, timeout=args.timeout, out=args.out)
    except CellExecutionError as exc:
        print(f"error: {args.notebook} failed:\n{exc}", file=sys.stderr)
        return 1
    part = "all cells" if args.smollm2 else f"cells not tagged {SKIP_TAG}"
    print(f"{args.notebook.relative_to(ROOT) if args.notebook.is_relative_to(ROOT) else args.notebook}: "
          f"{part} ran in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
