"""A third-party method is one file: installed from a temporary package, it gets its own CLI flags and
service options from its declarations, and runs through ``discover`` and ``POST /api/jobs``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = '''
import torch

from circuits.methods.base import Option, Scores, option_values


class Jitter:
    """Scores every edge with seeded noise around a constant: nothing real, but every path of discover runs."""

    name = "test-jitter"
    description = "a third-party method for the tests"
    granularity = "edge"
    cost = "nothing"
    options = (
        Option("jitter_scale", float, 1.0, "test-jitter: how large the noise is.", minimum=0.0),
        Option("jitter_seed", int, 0, "test-jitter: the noise's seed."),
        Option("jitter_sign", str, "negative", "test-jitter: sign of the scores.", choices=("negative", "positive")),
    )

    def score(self, engine, dataset, metric, options, *, progress=None):
        own = option_values(self, options.params)
        g = engine.graph
        gen = torch.Generator().manual_seed(own["jitter_seed"])
        sign = -1.0 if own["jitter_sign"] == "negative" else 1.0
        scores = sign * own["jitter_scale"] * (1.0 + torch.rand(g.n_senders, g.n_receivers, generator=gen))
        return Scores(graph=g, method=self.name, edge_scores=scores * g.valid_mask(), info={"own": own})
'''


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """A package ``circuits_test_jitter`` with its entry point, importable here and in subprocesses."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "circuits_test_jitter.py").write_text(PLUGIN)
    info = site / "circuits_test_jitter-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: circuits-test-jitter\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[circuits.methods]\ntest-jitter = circuits_test_jitter:Jitter\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def _cli(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    code = "import sys; from circuits.cli import main; sys.argv = ['circuits', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@pytest.mark.slow
def test_a_plugin_method_gets_flags_and_runs_through_discover(plugin_site, tmp_path):
    res = _cli(plugin_site, "discover", "--help", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for flag in ("--jitter-scale", "--jitter-seed", "--jitter-sign"):
        assert flag in res.stdout
    res = _cli(plugin_site, "discover", "greater-than", "--model", "planted", "--method", "test-jitter", "--n", "10",
               "--jitter-scale", "2.5", "--jitter-sign", "negative", "--top-k", "4", "--out", "run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["method"] == "test-jitter"
    assert manifest["options"]["jitter_scale"] == 2.5 and manifest["options"]["jitter_seed"] == 0
    assert manifest["method_info"]["own"]["jitter_sign"] == "negative"
    res = _cli(plugin_site, "discover", "greater-than", "--model", "planted", "--method", "test-jitter",
               "--jitter-sign", "sideways", "--out", "run2", cwd=tmp_path)
    assert res.returncode == 2 and "--jitter-sign" in res.stderr and "Traceback" not in res.stderr
    res = _cli(plugin_site, "discover", "greater-than", "--model", "planted", "--method", "eap",
               "--jitter-scale", "2", "--out", "run3", cwd=tmp_path)
    assert res.returncode == 2 and "--jitter-scale is not an option of 'eap'" in res.stderr


def test_a_plugin_method_is_served_and_runs_as_a_job(plugin_site, tmp_path):
    pytest.importorskip("fastapi", reason="the service needs fastapi (installed by `make install`)")
    from fastapi.testclient import TestClient

    from circuits.service.app import ServiceConfig, create_app
    from circuits.service.runner import job_outcome

    body = {"kind": "discover", "task": "greater-than", "model": "planted", "method": "test-jitter",
            "options": {"n": 10, "top_k": 4, "jitter_scale": 3, "jitter_seed": 5}}
    with TestClient(create_app(ServiceConfig(store=tmp_path / "store", workers=0))) as client:
        own = {o["name"]: o for o in client.get("/api/kinds").json()["discover"]["method_options"]}
        assert own["jitter_scale"]["methods"] == ["test-jitter"] and own["jitter_sign"]["choices"] == ["negative", "positive"]
        bad = client.post("/api/jobs", json={**body, "options": {"jitter_scale": -1}})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("options.jitter_scale:")
        r = client.post("/api/jobs", json=body)
        assert r.status_code == 201, r.text
        params = client.get(f"/api/jobs/{r.json()['id']}").json()["params"]
    assert params["method_params"] == {"jitter_scale": 3.0, "jitter_seed": 5}
    out = tmp_path / "out"
    out.mkdir()
    outcome = job_outcome({"kind": "discover", **params}, str(out), reuse_models=False)
    assert outcome.ok, outcome.error
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["jitter_scale"] == 3.0 and manifest["options"]["jitter_seed"] == 5
    assert outcome.result["edges_kept"] <= 4
