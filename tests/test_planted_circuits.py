"""Every method's default circuit on the planted models is the planted circuit (issue 11's bars).

``discover`` with the default selection (target faithfulness 0.9), the run folder written,
then ``circuits compare RUN REF --json`` against the planted ground truth: node precision and
recall 1.0 for every method; for the edge methods edge recall 1.0 and precision >= 0.9.

On planted-deep, EAP's first-order scores rank two zero-effect edges (a2.h1->m2, a2.h1->m3: a
LayerNorm scale that moves to first order only) above the last planted edge; the default
selection's verification by patching removes them (without it, edge precision is 9/11).
"""
from __future__ import annotations

import json

import pytest

from circuits.circuit.discover import discover
from circuits.engine.engine import GraphEngine
from circuits.models import load_model
from circuits.registry import get_method, get_task
from circuits.circuit.run_folder import write_run
from cli_helpers import invoke

METHODS = ("activation-patching", "eap", "eap-ig", "path-patching")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["planted", pytest.param("planted-deep", marks=pytest.mark.slow)])
def planted(request, tmp_path_factory):
    loaded = load_model(request.param)
    task = get_task("greater-than")
    ref = tmp_path_factory.mktemp("ref") / "gt.json"
    code, _, err = invoke("reference", request.param, "--out", str(ref))
    assert code == 0, err
    return request.param, GraphEngine.from_model(loaded), task, task.build(loaded.tokenizer, n=16, seed=3), ref


@pytest.mark.parametrize("method", METHODS)
def test_default_circuit_is_the_planted_one(planted, method, tmp_path):
    spec, engine, task, data, ref = planted
    method_obj = get_method(method)
    result = discover(engine, data, task.metric, method_obj, curve=False)
    run = {"task": task.name, "model": spec, "method": method, "n": len(data), "seed": 3}
    write_run(tmp_path / "run", result, run)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["granularity"] == method_obj.granularity == result.selection.granularity
    code, out, err = invoke("compare", str(tmp_path / "run"), str(ref), "--json")
    assert code == 0, err
    found = json.loads(out)
    print(f"{spec} {method}: {found}")
    assert found["granularity"] == method_obj.granularity
    assert found["nodes"]["precision"] == 1.0 and found["nodes"]["recall"] == 1.0
    if method_obj.granularity == "edge":
        assert found["edges"]["recall"] == 1.0 and found["edges"]["precision"] >= 0.9
    assert result.faithfulness.f >= 0.9
