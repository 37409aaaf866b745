"""circuits benchmark: one-line errors, the planted model's table, equality with discover, resuming, MIB folders."""
from __future__ import annotations

import json

import pytest
from cli_helpers import assert_user_error, invoke

from circuits.bench.benchmark import BenchmarkSpec, node_auroc, prepare_out
from circuits.graphs.bench import results_markdown

BASE = ("benchmark", "--model", "planted", "--tasks", "greater-than", "--methods", "eap")


@pytest.mark.parametrize("flags, fragment", [
    (("--methods", "eap,nope"), "unknown method 'nope'"),
    (("--tasks", "greater-than,nope"), "unknown task 'nope'"),
    (("--bootstrap", "1"), "--bootstrap"),
    (("--methods", " , "), "--methods is empty"),
])
def test_bad_lists_and_bootstrap_are_one_line_errors(tmp_path, flags, fragment):
    args = list(BASE) + ["--out", str(tmp_path / "b")]
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, _, err = invoke(*args)
    assert_user_error(code, err, fragment)
    assert not (tmp_path / "b").exists()  # refused before anything is written


def test_a_folder_of_another_benchmark_is_refused(tmp_path):
    out = tmp_path / "b"
    prepare_out(out, BenchmarkSpec(model="planted", tasks=("greater-than",), methods=("eap",), n=20))
    code, _, err = invoke(*BASE, "--out", str(out), "--n", "30")
    assert_user_error(code, err, "holds another benchmark (its n differ)")
    code, _, err = invoke(*BASE, "--out", str(out), "--n", "20", "--tasks", "ioi")
    assert_user_error(code, err, "tasks")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    code, _, err = invoke(*BASE, "--out", str(tmp_path / "other"))
    assert_user_error(code, err, "holds no benchmark")
    # the same settings resume it, other methods included
    assert prepare_out(out, BenchmarkSpec(model="planted", tasks=("greater-than",), methods=("eap", "acdc"), n=20)) is False


def test_node_auroc_by_hand():
    assert node_auroc({"a": 3.0, "b": -2.0, "c": 1.0, "d": 0.5}, {"a", "b"}) == 1.0
    assert node_auroc({"a": 1.0, "b": 2.0, "c": 1.0}, {"a"}) == pytest.approx(0.25)  # below b, tied with c
    assert node_auroc({"a": 1.0}, {"a"}) is None


def test_results_markdown_has_one_table_per_task():
    cell = {"task": "t1", "method": "eap", "cpr": 1.5, "cmd": 0.25, "faithfulness_heldout": 0.9, "edges_kept": 1234,
            "seconds": 2.0, "peak_memory_bytes": 3 * 2 ** 20, "stability": {"k": 5, "edge_jaccard": 0.6, "node_jaccard": 0.8},
            "auroc": 1.0, "granularity": "edge"}
    text = results_markdown({"settings": {"model": "m", "tasks": ["t1", "t2"]}, "reference": "planted", "cells": [cell]})
    assert "## t1" in text and "## t2" in text and "No method has finished on this task yet." in text
    assert "| eap | 1.500 | 0.250 | 0.900 | 1,234 | 2.0 | 3 MiB | 0.600 / 0.800 (k 5) | 1.000 |" in text


@pytest.fixture(scope="module")
def planted_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    args = ("benchmark", "--model", "planted", "--tasks", "greater-than", "--methods", "eap-ig,eap", "--n", "20",
            "--seed", "3", "--out", str(out), "--mib")
    code, stdout, err = invoke(*args)
    assert code == 0, err
    return out, args, stdout


@pytest.mark.slow
def test_planted_benchmark_writes_its_table_figures_and_mib_folders(planted_bench):
    out, _, stdout = planted_bench
    results = json.loads((out / "results.json").read_text())
    assert [(c["task"], c["method"]) for c in results["cells"]] == [("greater-than", "eap-ig"), ("greater-than", "eap")]
    assert results["missing"] == [] and results["reference"] == "planted"
    for c in results["cells"]:
        assert c["auroc"] == 1.0 and set(c["curve_signed"][0]) == {"fraction", "edges", "faithfulness"}
        assert c["peak_memory_bytes"] is None or c["peak_memory_bytes"] >= 0
    text = (out / "results.md").read_text()
    assert "## greater-than" in text and "| eap-ig |" in text and "AUROC (planted)" in text
    assert (out / "greater-than.png").read_bytes().startswith(b"\x89PNG") and (out / "greater-than.svg").is_file()
    assert (out / "mib" / "eap" / "greater-than_planted" / "importances.json").is_file()
    assert "greater-than / eap:" in stdout


@pytest.mark.slow
def test_a_cell_equals_the_same_discover_run(planted_bench, tmp_path):
    """eap runs second, on the evaluators eap-ig filled: its figures are still those of its own discover run."""
    out, _, _ = planted_bench
    cell = json.loads((out / "cells" / "greater-than" / "eap.json").read_text())
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap", "--n", "20", "--seed", "3",
                          "--out", str(tmp_path / "d"))
    assert code == 0, err
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    for key in ("faithfulness_heldout", "cpr", "cmd", "faithfulness", "cpr_heldout", "cmd_heldout", "edges_kept"):
        assert cell[key] == pytest.approx(m[key], abs=1e-12), key
    assert cell["curve_signed"] == m["curve_signed"] and cell["curve_abs"] == m["curve_abs"]


@pytest.mark.slow
def test_a_rerun_resumes_without_redoing_finished_cells(planted_bench):
    out, args, _ = planted_bench
    cell = out / "cells" / "greater-than" / "eap.json"
    before = cell.stat().st_mtime_ns
    (out / "cells" / "greater-than" / "eap-ig.json").unlink()  # as if interrupted during eap-ig
    code, stdout, err = invoke(*args)
    assert code == 0, err
    assert "greater-than / eap: " in stdout and "already done" in stdout.split("greater-than / eap: ")[1].splitlines()[0]
    assert cell.stat().st_mtime_ns == before
    assert (out / "cells" / "greater-than" / "eap-ig.json").is_file()
