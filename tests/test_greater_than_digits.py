"""Greater-than with a digit tokenizer: the metric every method scores is the PD that `evaluate` and
`analyze` report (issue 12), on a tiny random Llama with a digit-splitting tokenizer."""
from __future__ import annotations

import pytest
import torch

from circuits.analysis.forward import EngineForward
from circuits.engine.engine import GraphEngine
from circuits.data.evaluation import model_forward
from circuits.circuit.faithfulness import circuit_metric, reference_outputs
from circuits.models import load_model
from circuits.tasks.greater_than import GreaterThan

GT = GreaterThan()


@pytest.fixture(scope="module")
def llama(tiny_llama_dir, one_thread):
    loaded = load_model(str(tiny_llama_dir))
    return loaded, GraphEngine.from_model(loaded), GT.build(loaded.tokenizer, n=6, seed=2)


def test_metric_of_the_full_model_is_evaluates_pd(llama):
    loaded, engine, ds = llama
    assert ds.info["mode"] == "digits" and ds.answer_pos.shape == (6, 2)
    m_full = GT.metric(engine.run(ds.clean, ds.answer_pos).logits, ds)
    reported = GT.evaluate(model_forward(loaded), ds)["probability_difference"]
    torch.testing.assert_close(m_full.double(), reported.double(), rtol=0, atol=1e-5)


def test_circuit_pd_in_analyze_is_the_circuits_metric(llama):
    """analyze's circuit PD (teacher-forced through EngineForward) is faithfulness's m(C)."""
    _, engine, ds = llama
    torch.manual_seed(1)
    keep = engine.graph.valid_mask() & (torch.rand(engine.graph.n_senders, engine.graph.n_receivers) < 0.4)
    m_c = circuit_metric(engine, ds, GT.metric, keep, reference_outputs(engine, ds))
    _, pd, _ = GT.year_table(EngineForward(engine, ds, keep), ds)
    assert float(pd.double().mean()) == pytest.approx(m_c, abs=1e-5)


def test_metric_refuses_a_single_position(llama):
    _, engine, ds = llama
    with pytest.raises(ValueError, match="two positions"):
        GT.metric(engine.run(ds.clean, ds.first_answer_pos).logits, ds)
