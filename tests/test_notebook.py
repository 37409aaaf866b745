"""The tutorial notebook (docs/tutorial.ipynb) runs: its planted part, executed by nbclient as `make notebook` does.

A broken notebook (a renamed API, a changed result) fails here.  The SmolLM2 cells (tagged
``smollm2``) are left out, as in CI; they run with ``CIRCUITS_NOTEBOOK_SMOLLM2=1 make notebook``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def test_notebook_tags_its_smollm2_cells():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    tagged = [c for c in nb["cells"] if "smollm2" in c.get("metadata", {}).get("tags", [])]
    code = [c for c in tagged if c["cell_type"] == "code"]
    assert code, "the SmolLM2 section's code cells must be tagged smollm2 so CI can leave them out"
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), "commit the notebook without outputs"


@pytest.mark.slow
def test_notebook_planted_part_runs(tmp_path):
    import nbformat  # the docs extra, installed by make install

    out = tmp_path / "executed.ipynb"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebook.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "CIRCUITS_NOTEBOOK_SMOLLM2": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(out, as_version=4)
    assert not any("smollm2" in c.metadata.get("tags", []) for c in nb.cells)
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.output_type == "stream")
    assert "5 of 110 edges kept, faithfulness 1.000" in text, text
    assert "'auroc': 1.0" in text and "'recall': 1.0" in text, text
    assert "greater-than-price: 5 edges, faithfulness 1.000" in text, text
    frames = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "display_data"]
    assert len(frames) == 2 and all("<iframe srcdoc=" in o.data["text/html"] for o in frames)
