"""discover --holdout (held-out faithfulness) and --data on discover, evaluate-circuit and analyze (issue 12)."""
from __future__ import annotations

import json

import pytest

from circuits.errors import CircuitsError
from tests.cli_helpers import assert_user_error, invoke


def _dataset(n: int):
    import torch

    from circuits.data.dataset import PromptDataset

    tokens = torch.arange(n * 3).view(n, 3)
    return PromptDataset(clean=tokens, corrupted=tokens, answer_pos=torch.full((n,), 2), metadata=[{}] * n, task="t")


def test_split_holdout_is_seeded_disjoint_and_keeps_ids():
    from circuits.circuit.discover import split_holdout

    data = _dataset(10)
    kept, held = split_holdout(data, 0.3, seed=4)
    assert (len(kept), len(held)) == (7, 3)
    ids = set(kept.ids.tolist()) | set(held.ids.tolist())
    assert ids == set(range(10)) and not set(kept.ids.tolist()) & set(held.ids.tolist())
    assert held.clean.tolist() == data.clean[held.ids].tolist()
    _, held2 = split_holdout(data, 0.3, seed=4)
    assert held2.ids.tolist() == held.ids.tolist()
    same, none = split_holdout(data, 0.0)
    assert same is data and none is None


@pytest.mark.parametrize("fraction,n,fragment", [(1.0, 10, "below 1"), (-0.1, 10, "at least 0"),
                                                 (0.05, 10, "fewer than 1 prompt")])
def test_split_holdout_refuses(fraction, n, fragment):
    from circuits.circuit.discover import split_holdout

    with pytest.raises(CircuitsError, match=fragment):
        split_holdout(_dataset(n), fraction)


def _write_prompts(path, years):
    path.write_text("".join(json.dumps({"noun": "war", "century": 17, "yy": yy}) + "\n" for yy in years))
    return path


@pytest.fixture(scope="module")
def run_with_data(tmp_path_factory):
    """discover on planted with --data and --holdout 0.25 (8 prompts: 2 held out)."""
    work = tmp_path_factory.mktemp("holdout")
    data = _write_prompts(work / "prompts.jsonl", [12, 25, 33, 47, 51, 66, 78, 89])
    out = work / "run"
    code, stdout, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap-ig",
                               "--data", str(data), "--holdout", "0.25", "--top-k", "8", "--out", str(out))
    assert code == 0, err
    return out, data, stdout


def test_discover_with_data_and_holdout_records_both(run_with_data):
    out, data, stdout = run_with_data
    m = json.loads((out / "manifest.json").read_text())
    assert m["data"] == str(data) and m["n"] == 8 and m["n_scored"] == 6 and m["n_heldout"] == 2
    assert m["holdout"] == 0.25 and m["metric"] == "task" and m["ablation"] == "corrupted"
    assert 0.5 < m["faithfulness_heldout"] <= 1.5 and m["cpr_heldout"] is not None and m["cmd_heldout"] is not None
    assert "held-out (2 prompts): faithfulness" in stdout
    report = (out / "report.md").read_text()
    assert "faithfulness, held-out prompts" in report and "CPR, held-out prompts" in report


def test_evaluate_circuit_reuses_the_data_and_the_split(run_with_data):
    out, data, _ = run_with_data
    m = json.loads((out / "manifest.json").read_text())
    code, stdout, err = invoke("evaluate-circuit", str(out), "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["data"] == str(data) and (res["n"], res["n_scored"], res["n_heldout"]) == (8, 6, 2)
    assert res["faithfulness"] == pytest.approx(m["faithfulness"], abs=1e-6)
    assert res["faithfulness_heldout"] == pytest.approx(m["faithfulness_heldout"], abs=1e-6)
    code, stdout, err = invoke("evaluate-circuit", str(out), "--holdout", "0", "--json")
    assert code == 0, err
    assert json.loads(stdout)["n_heldout"] == 0 and json.loads(stdout)["n_scored"] == 8


def test_prompt_files_off_the_template_are_one_line_errors(tmp_path, run_with_data):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"clean": "The war started in 1732 and ended in 17"}) + "\n")
    for args in (["discover", "greater-than", "--model", "planted", "--method", "eap", "--out", str(tmp_path / "r")],
                 ["evaluate-circuit", str(run_with_data[0])],
                 ["analyze", "greater-than", "--model", "planted", "--out", str(tmp_path / "a")]):
        code, _, err = invoke(*args, "--data", str(bad))
        assert_user_error(code, err, "does not follow the template")


@pytest.mark.parametrize("flags,fragment", [(["--holdout", "1"], "--holdout"),
                                            (["--holdout", "0.01", "--n", "50"], "fewer than 1 prompt")])
def test_bad_holdout_is_a_one_line_error(tmp_path, flags, fragment):
    code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap",
                          "--out", str(tmp_path / "r"), *flags)
    assert_user_error(code, err, fragment)


@pytest.mark.parametrize("method", ["eap-ig", "activation-patching"])
def test_heldout_faithfulness_is_the_circuits_faithfulness_on_those_prompts(method):
    """The held-out figure is plain faithfulness of the chosen circuit (edge or node) on the held-out prompts."""
    from circuits.circuit.discover import SelectionSpec, discover, evaluation_mask, split_holdout
    from circuits.engine.engine import GraphEngine
    from circuits.circuit.faithfulness import faithfulness
    from circuits.models import load_model
    from circuits.registry import get_method, get_task

    loaded = load_model("planted")
    engine, task = GraphEngine.from_model(loaded), get_task("greater-than")
    scored, held = split_holdout(task.build(loaded.tokenizer, n=10, seed=1), 0.3, seed=1)
    method_obj = get_method(method)
    result = discover(engine, scored, task.metric, method_obj, selection=SelectionSpec("top-k", 6), curve=False,
                      heldout=held)
    granularity = getattr(method_obj, "granularity", "edge")
    mask = evaluation_mask(result.selection.keep_mask, engine.graph, granularity)
    want = faithfulness(engine, held, task.metric, mask)
    assert result.heldout.n == 3 and result.heldout.faithfulness.f == pytest.approx(want.f, abs=1e-9)
    assert result.heldout.faithfulness.m_full == pytest.approx(want.m_full, abs=1e-12)
