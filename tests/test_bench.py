"""``scripts/bench.py --quick`` runs end to end and writes a well-formed bench.json (no timing assertions)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The quick bench takes about a minute: the whole module is a slow test (the guide puts test_bench there).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("forward", "forward_backward", "activation_patching", "eap", "eap_ig", "path_patching",
         "faithfulness", "eap_peer_style", "engine_forward", "engine_forward_backward", "acdc", "acdc_naive", "load",
         "load_checked", "load_checked_first", "gim", "relp", "edge_patching")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    env = {**os.environ, "CIRCUITS_CACHE": str(tmp / "cache")}  # the tiny model is built here, not in the user's cache
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_rows_have_every_measurement(bench):
    report, _ = bench
    rows = {r["name"]: r for r in report["measurements"]}
    assert set(NAMES) <= set(rows)
    for name in NAMES:
        row = rows[name]
        assert {"name", "seconds", "ratio_to_forward_backward", "peak_memory_bytes"} <= set(row)
        assert _positive(row["seconds"]) and _positive(row["ratio_to_forward_backward"]), row
        assert isinstance(row["peak_memory_bytes"], int) and row["peak_memory_bytes"] > 0
    assert rows["forward_backward"]["ratio_to_forward_backward"] == pytest.approx(1.0)
    assert rows["eap"]["details"]["forward_passes"] == 2
    assert rows["eap_ig"]["details"]["ig_steps"] == 5
    assert [rows[n]["details"]["check"] for n in ("load", "load_checked", "load_checked_first")] == [False, True, True]
    assert rows["load_checked_first"]["details"]["fresh_cache"] and not rows["load_checked"]["details"]["fresh_cache"]
    per_pass = report["per_pass"]  # activation patching per node, path patching per pass, x one forward
    assert set(per_pass) == {"activation_patching_per_node", "path_patching_per_pass"}
    for row in per_pass.values():
        assert _positive(row["ratio_to_forward"]) and row["passes"] > 0 and row["forward"] == "engine forward", row


def test_machine_settings_and_checks(bench):
    report, stdout = bench
    machine = report["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["torch"] and machine["device"] == "cpu"
    settings = report["settings"]
    assert settings["quick"] is True and settings["prompts"] == 10 and settings["model"]["n_layer"] == 2
    assert "parameters" in settings["forward_backward_grad"]
    assert report["checks"]["peer_style_matches"]["ok"], report["checks"]
    assert report["checks"]["acdc_naive_matches"]["ok"], report["checks"]
    assert len(report["targets"]) >= 8 and all(isinstance(t["pass"], bool) for t in report["targets"])
    for label in ("EAP time <= 2.5x", "EAP-IG(5) time <= 7x", "EAP peak memory <= 1.5x", "EAP faster than eap_peer_style",
                  "ACDC >= 10x faster per edge test", "EAP peak at n=40 <= 1.1x", "1B-shape EAP completes within 24 GiB",
                  "Loading with the engine's checks <= 1.1x", "GIM time <= 1.3x", "RelP time <= 1.3x",
                  "Positional EAP (per span"):
        assert any(line.startswith(("PASS: ", "FAIL: ")) and label in line for line in stdout.splitlines()), label


def test_scaling_tables(bench):
    report, _ = bench
    scaling = report["scaling"]
    assert [p["prompts"] for p in scaling["prompts"]] == [5, 10]
    assert [p["layers"] for p in scaling["layers"]] == [1, 2]
    for point in scaling["prompts"] + scaling["layers"]:
        for key in ("eap_seconds", "forward_backward_seconds", "eap_peak_memory_bytes", "forward_backward_peak_memory_bytes"):
            assert _positive(point[key]), point
    assert _positive(scaling["prompts"][0]["eap_seconds_per_prompt"])
    assert _positive(scaling["layers"][0]["eap_seconds_per_layer"])


def test_streaming_and_large_model(bench):
    report, _ = bench
    stream = report["streaming"]
    assert stream["batch_size"] == 5 and [p["prompts"] for p in stream["points"]] == [10, 40]
    assert all(_positive(p["seconds"]) and _positive(p["peak_memory_bytes"]) for p in stream["points"])
    assert stream["peak_ratio"] == pytest.approx(stream["points"][1]["peak_memory_bytes"] / stream["points"][0]["peak_memory_bytes"])
    big = report["large_model"]
    assert big["dtype"] == "bfloat16" and big["score_dtype"] == "float32" and big["finite_scores"] is True
    assert big["parameters"] > 0 and _positive(big["seconds"]) and big["prompts"] == 4


def test_gpu_plan_runs_on_the_cpu(tmp_path):
    """The ``--device cuda`` plan's code path, exercised on the CPU with ``--plan cuda --quick``."""
    out = tmp_path / "bench-cuda.json"
    env = {**os.environ, "CIRCUITS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--plan", "cuda", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [m["name"] for m in report["measurements"]]
    assert names == [f"{row}@{k}" for k in (4, 8) for row in ("forward", "forward_backward", "eap", "eap_ig")] + ["eap_llama_1b_bf16"]
    assert all(_positive(m["seconds"]) and m["peak_memory_bytes"] > 0 for m in report["measurements"])
    assert report["measurements"][-1]["details"]["dtype"] == "bfloat16"
