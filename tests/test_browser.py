"""The viewer page in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

One browser launch for the whole module. `make browser` installs chromium (apt, only when missing;
CI runs it) and `make install` playwright (the dev extra); the test is skipped only when no chromium
binary exists, and never in CI (CIRCUITS_REQUIRE_BROWSER=1).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from circuits.graphs.files import load_circuit
from circuits.graphs.viewer import run_inputs, write_viewer
from test_viewer import PLANTED, all_scores, planted_run

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
                 if p and Path(p).is_file()), None)
if CHROMIUM is None and os.environ.get("CIRCUITS_REQUIRE_BROWSER"):  # CI (.ci/run) installs chromium: never skip there
    raise RuntimeError("CIRCUITS_REQUIRE_BROWSER is set but no chromium binary is installed: run `make browser`")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: `make browser` runs apt-get install -y chromium")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from playwright.sync_api import sync_playwright  # the dev extra; an ImportError here is a setup error

    run = planted_run(tmp_path_factory.mktemp("run"))
    scores, manifest = run_inputs(run)
    html = write_viewer(load_circuit(run), run / "circuit.html", scores=scores, manifest=manifest)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            pg = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            requests: list[str] = []
            pg.on("request", lambda req: requests.append(req.url))
            pg.goto(html.resolve().as_uri())
            pg.wait_for_selector("#count[data-edges]")
            yield pg, errors, requests
        finally:
            browser.close()


def test_planted_circuit_slider_and_click(page):
    pg, errors, requests = page
    # the planted circuit: its 5 nodes and 5 edges, labelled
    assert pg.get_attribute("#count", "data-nodes") == "5"
    assert pg.get_attribute("#count", "data-edges") == str(len(PLANTED))
    active = pg.eval_on_selector_all("#nodes .node.active", "els => els.map(e => e.getAttribute('data-name'))")
    assert sorted(active) == sorted(["input", "a0.h0", "a0.h1", "m1", "logits"])
    assert pg.locator("#edges path.edge").count() == 5
    # the slider changes the number of edges shown (ranked over all 110 scored edges)
    pg.eval_on_selector("#k-slider", "el => { el.value = 1000; el.dispatchEvent(new Event('input')); }")
    assert pg.get_attribute("#count", "data-edges") == "110"
    assert pg.locator("#edges path.edge").count() == 110
    pg.eval_on_selector("#k-slider", "el => { el.value = 400; el.dispatchEvent(new Event('input')); }")
    shown = int(pg.get_attribute("#count", "data-edges"))
    assert 0 < shown < 110 and pg.locator("#edges path.edge").count() == shown
    pg.click("#show-circuit")
    assert pg.get_attribute("#count", "data-edges") == "5"
    # clicking m1 shows its score (its out-edges' sum: the run gives no node score) and its edges
    pg.click('#nodes [data-name="m1"]')
    assert pg.inner_text("#detail-name") == "m1"
    expected = sum(v for k, v in all_scores().items() if k.startswith("m1->"))  # m1->logits only: 0.84
    assert pg.inner_text("#detail-score").startswith(f"{expected:.4g}")
    details = pg.inner_text("#details")
    assert "a0.h0->m1" in details and "m1->logits" in details
    # the layer filter hides layer 1
    pg.fill("#layer-hi", "0")
    pg.dispatch_event("#layer-hi", "change")
    assert pg.get_attribute("#count", "data-edges") == "3"  # input->a0.h0<v>, input->a0.h1<v>, a0.h1->logits
    # the faithfulness curve marks the chosen circuit
    assert pg.locator("#curve-svg #chosen").count() == 1
    assert not errors, errors
    assert all(url.startswith("file://") for url in requests), requests  # nothing but the page itself


def test_both_curves_and_bootstrap_shading(page, tmp_path):
    """A run with the two MIB curves and bootstrap frequencies: two curve lines, kept edges shaded by inclusion."""
    import json

    from circuits.graphs.build import add_frequencies, write_json

    run = planted_run(tmp_path)
    G = load_circuit(run)
    add_frequencies(G, {name: (0.2 if i == 0 else 1.0) for i, name in enumerate(sorted(PLANTED))})
    write_json(G, run / "circuit.json")
    manifest = json.loads((run / "manifest.json").read_text())
    curve = manifest.pop("curve")
    manifest.update(curve_signed=[{**p, "faithfulness": p["faithfulness"] * 1.5} for p in curve], curve_abs=curve,
                    stability={"k": 5, "edge_jaccard": 0.6, "node_jaccard": 0.8})
    (run / "manifest.json").write_text(json.dumps(manifest))
    scores, manifest = run_inputs(run)
    html = write_viewer(load_circuit(run), run / "circuit.html", scores=scores, manifest=manifest)
    pg = page[0].context.browser.new_page(viewport={"width": 1400, "height": 900})  # the module's browser
    try:
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(html.resolve().as_uri())
        pg.wait_for_selector("#count[data-edges]")
        assert pg.locator("#curve-svg path.curve").count() == 2
        assert pg.locator("#curve-svg path.curve.alt").count() == 1
        opacities = sorted(float(x) for x in pg.eval_on_selector_all(
            "#edges path.edge", "els => els.map(e => e.getAttribute('stroke-opacity'))"))
        assert opacities == pytest.approx([0.12 + 0.83 * 0.2] + [0.95] * 4, abs=0.005)  # written with 2 decimals
        assert "edge Jaccard 0.6" in pg.inner_text("#summary")
        index = pg.evaluate("() => window.circuitViewer.data.edges.findIndex(e => e.length > 5 && e[5] < 0.5)")
        pg.evaluate(f"() => window.circuitViewer.pick('e{index}')")
        assert pg.inner_text("#detail-frequency") == "20% of resamples"
        assert not errors, errors
    finally:
        pg.close()
