"""``circuits export`` and ``circuits compare`` through the real entry point (``circuits.cli.main``) in a subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from circuits.graphs.build import build_graph, edge_names, write_json

from circuits.graphs.files import load_circuit
from circuits.graphs.compare import write_scores
from circuits.graphs.dot import to_dot

# Runs the console script's function; at exit reports whether torch was imported.
ENTRY = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('HEAVY=%s\\n' % sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules)))\n"
    "from circuits.cli import main\n"
    "sys.argv = ['circuits'] + sys.argv[1:]\n"
    "main()\n"
)

FOUND = {"a0.h1->a9.h1<q>": 1.0, "a0.h1->a9.h1<k>": 0.5, "a9.h1->logits": 2.0, "m3->logits": -0.4}
REFERENCE = {"a0.h1->a9.h1<q>": 1.0, "a9.h1->logits": 1.0, "a0.h2->a9.h1<v>": 1.0}
SCORES = {**FOUND, "a0.h2->a9.h1<v>": 0.1, "m1->logits": 0.05, "input->m0": -0.01}


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    heavy = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert heavy == ["HEAVY=[]"], f"torch imported by a graphs command: {proc.stderr}"
    proc.stderr = "\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("HEAVY="))
    return proc


def assert_user_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    write_json(build_graph(FOUND, metadata={"task": "greater-than", "method": "eap"}), folder / "circuit.json")
    write_scores(SCORES, folder / "scores.tsv")
    return folder


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    return write_json(build_graph(REFERENCE), tmp_path / "reference.json")


# ---------------------------------------------------------------- export


def test_export_formats_default_paths(run_dir):
    src = run_dir / "circuit.json"
    proc = run_cli("export", str(src), "--format", "dot")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(run_dir / "circuit.dot")
    assert (run_dir / "circuit.dot").read_text() == to_dot(load_circuit(src))
    proc = run_cli("export", str(run_dir), "--format", "graphml")  # a run folder works too
    assert proc.returncode == 0, proc.stderr
    assert "<graphml" in (run_dir / "circuit.graphml").read_text()


def test_export_json_with_out(run_dir, tmp_path):
    out = tmp_path / "copy" / "c.json"
    proc = run_cli("export", str(run_dir / "circuit.json"), "--format", "json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert edge_names(load_circuit(out)) == set(FOUND)


def test_export_json_refuses_to_overwrite_input(run_dir):
    before = (run_dir / "circuit.json").read_text()
    assert_user_error(run_cli("export", str(run_dir / "circuit.json"), "--format", "json"), "--out")
    assert (run_dir / "circuit.json").read_text() == before


def test_export_svg(run_dir):
    proc = run_cli("export", str(run_dir / "circuit.json"), "-f", "svg")
    assert proc.returncode == 0, proc.stderr
    assert "<svg" in (run_dir / "circuit.svg").read_text()


def test_export_missing_file(tmp_path):
    assert_user_error(run_cli("export", str(tmp_path / "nope.json"), "--format", "dot"), "does not exist")


def test_export_invalid_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert_user_error(run_cli("export", str(bad), "--format", "dot"), "not valid JSON")


def test_export_unknown_format(run_dir):
    proc = run_cli("export", str(run_dir / "circuit.json"), "--format", "pdf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- compare


def test_compare_json_with_run_folder(run_dir, reference):
    proc = run_cli("compare", str(run_dir), str(reference), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON object
    assert set(result) == {"nodes", "edges", "granularity"} and result["granularity"] == "edge"
    # nodes: A {a0.h1, a9.h1, logits, m3}, B {a0.h1, a9.h1, logits, a0.h2}
    assert result["nodes"] == pytest.approx({"precision": 0.75, "recall": 0.75, "jaccard": 0.6})
    # edges: A 4, B 3, shared 2 (q into a9.h1, a9.h1->logits)
    edges = result["edges"]
    assert (edges["precision"], edges["recall"], edges["jaccard"]) == pytest.approx((0.5, 2 / 3, 0.4))
    # AUROC over the 7 scored edges: positives |1|, |2|, |0.1| against |0.5|, |0.4|, |0.05|, |0.01|
    # wins: 1 -> 4, 2 -> 4, 0.1 -> 2, so 10 of 12 pairs
    assert edges["auroc"] == pytest.approx(10 / 12)


def test_compare_json_with_file_has_no_auroc(run_dir, reference):
    proc = run_cli("compare", str(run_dir / "circuit.json"), str(reference), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["edges"]["auroc"] is None


def test_compare_table(run_dir, reference):
    proc = run_cli("compare", str(run_dir), str(reference))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "precision" in out and "recall" in out and "jaccard" in out and "auroc" in out
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.split() and ln.split()[0] in ("nodes", "edges")}
    assert rows["nodes"] == ["0.750", "0.750", "0.600", "-"]
    assert rows["edges"] == ["0.500", "0.667", "0.400", "0.833"]


def test_compare_missing_reference(run_dir, tmp_path):
    assert_user_error(run_cli("compare", str(run_dir), str(tmp_path / "missing.json")), "does not exist")


def test_compare_folder_without_circuit(tmp_path, reference):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("compare", str(empty), str(reference), "--json"), "holds no circuit.json")


def test_export_html_eap_ig_and_mib(run_dir, reference):
    proc = run_cli("export", str(run_dir), "-f", "html", "--compare", str(reference))
    assert proc.returncode == 0, proc.stderr
    page = (run_dir / "circuit.html").read_text()
    assert "http://" not in page and "https://" not in page and '"label":"reference.json"' in page
    proc = run_cli("export", str(run_dir), "-f", "eap-ig")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((run_dir / "circuit.eap-ig.json").read_text())
    assert set(data["edges"]) == set(SCORES) and {n for n, v in data["edges"].items() if v["in_graph"]} == set(FOUND)
    assert edge_names(load_circuit(run_dir / "circuit.eap-ig.json")) == set(FOUND)
    proc = run_cli("export", str(run_dir / "circuit.json"), "-f", "mib")
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "mib" / "greater-than_model" / "importances.json").is_file()
    eap = run_dir / "circuit.eap-ig.json"  # an EAP-IG file carries every score: it exports to MIB by itself
    proc = run_cli("export", str(eap), "-f", "mib", "--out", str(run_dir / "from-eap"))
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads((run_dir / "from-eap" / "greater-than_model" / "importances.json").read_text())["edges"]) == set(SCORES)
