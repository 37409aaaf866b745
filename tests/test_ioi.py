"""The IOI task: templates, single-token fillers, ABC corruption, balance, padding, prompt files, metric."""
from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.data.evaluation import model_forward
from circuits.models import load_model
from circuits.data.task import answer_logits
from circuits.tasks.ioi import IOI, MIN_NAMES, OBJECTS, PLACES, TEMPLATES, fill, load_names

TASK = IOI()


@pytest.fixture(scope="module")
def gpt2_model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir))


def test_names_file():
    names = load_names()
    assert len(names) >= 150 and len(set(names)) == len(names)


def test_prompts_corruption_and_padding(gpt2_tok):
    ds = TASK.build(gpt2_tok, n=90, seed=0)
    assert ds.task == "ioi" and ds.info["padded"]
    pad = ds.info["pad"]
    for clean, corrupt, meta, answer in zip(ds.clean, ds.corrupted, ds.metadata, ds.answer_pos):
        a = int(answer)
        real, tail = clean[:a + 1], clean[a + 1:]
        assert int(real[0]) == 50256 and all(int(t) == pad for t in tail) and torch.equal(corrupt[a + 1:], tail)
        text = fill(TEMPLATES[meta["template"]], meta["order"], meta["io_name"], meta["s_name"], meta["s_name"],
                    place="{place}", obj="{obj}")
        decoded = gpt2_tok.decode(real)[len("<|endoftext|>"):]
        head = text.split("{")[0]
        assert decoded.startswith(head) and decoded.endswith(" to")
        for word in (meta["io_name"], meta["s_name"]):  # every filler is one token after a space
            assert gpt2_tok.encode(" " + word) == [meta["io" if word == meta["io_name"] else "s"]]
        ids = real.tolist()
        assert ids.count(meta["io"]) == 1 and ids.count(meta["s"]) == 2
        first = min(ids.index(meta["io"]), ids.index(meta["s"]))
        assert ids[first] == (meta["io"] if meta["order"] == "ABBA" else meta["s"])
        # ABC: exactly the subject's second mention becomes the third name
        diff = (clean != corrupt).nonzero().flatten().tolist()
        s2 = max(i for i, t in enumerate(ids) if t == meta["s"])
        assert diff == [s2] and int(corrupt[s2]) == meta["c"] and meta["c"] not in (meta["io"], meta["s"])


def test_every_template_fills_and_tokenizes(gpt2_tok):
    for t in TEMPLATES:
        for order in ("ABBA", "BABA"):
            text = fill(t, order, "Mary", "John", "John", PLACES[0], OBJECTS[0])
            assert text.count("Mary") == 1 and text.count("John") == 2 and text.endswith(" to")


def test_sampling_is_seeded_and_balanced(gpt2_tok):
    a, b, c = (TASK.build(gpt2_tok, n=61, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.clean, b.clean) and a.metadata == b.metadata and not torch.equal(a.clean, c.clean)
    orders = Counter(m["order"] for m in a.metadata)
    assert abs(orders["ABBA"] - orders["BABA"]) <= 1
    templates = Counter(m["template"] for m in a.metadata)
    assert set(templates) == set(range(len(TEMPLATES))) and max(templates.values()) - min(templates.values()) <= 1


def test_smollm2_tokenizer_builds(smollm2_gguf):
    from circuits.models.gguf import GGUFFile, _tokenizer

    tok = _tokenizer(GGUFFile(smollm2_gguf), "llama")
    ds = TASK.build(tok, n=30, seed=0)
    for clean, meta, answer in zip(ds.clean, ds.metadata, ds.answer_pos):
        ids = clean[:int(answer) + 1].tolist()
        assert ids.count(meta["io"]) == 1 and ids.count(meta["s"]) == 2
        assert tok.convert_ids_to_tokens(meta["io"]) == "Ġ" + meta["io_name"]


def test_a_tokenizer_that_splits_names_is_refused(digit_tokenizer):
    with pytest.raises(CircuitsError, match=f"at least {MIN_NAMES} names that are one token"):
        TASK.build(digit_tokenizer, n=4, seed=0)


def test_data_files(tmp_path, gpt2_tok):
    rows = [{"clean": "Then, Mary and John went to the store. John gave a drink to", "io": "Mary", "s": "John"},
            {"clean": "When Anna and Paul got a ring at the school, Paul decided to give it to", "io": "Anna", "s": "Paul",
             "c": "Kate"}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = TASK.build(gpt2_tok, n=10, seed=0, data=path)
    assert len(ds) == 2
    assert gpt2_tok.decode(ds.corrupted[1][:int(ds.answer_pos[1]) + 1]).endswith("school, Kate decided to give it to")
    assert gpt2_tok.decode(ds.clean[0][:int(ds.answer_pos[0]) + 1]) == "<|endoftext|>" + rows[0]["clean"]
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("clean,io,s,corrupted\n\"Then, Mary and John left. John said to\",Mary,John,\"Then, Mary and John left. Tom said to\"\n")
    one = TASK.build(gpt2_tok, n=10, seed=0, data=csv_path)
    assert gpt2_tok.decode(one.corrupted[0]).endswith("Tom said to")


@pytest.mark.parametrize("record, fragment", [
    ({"clean": "Then, Zachary and John left. John said to", "io": "Zachary", "s": "John"}, "use a single-token name"),
    ({"clean": "Then, Mary and John left. John said to", "io": "Mary"}, "needs 'clean'"),
    ({"clean": "Then, Mary and Anna left. Anna said to", "io": "Mary", "s": "John"}, "does not occur"),
    ({"clean": "Then, Mary and John left. John said to", "io": "Mary", "s": "John", "c": "Zachary"}, "different lengths"),
    ({"clean": "Mary said to", "io": "Mary", "s": "John", "corrupted": "John said to"}, "IO once and S twice"),
])
def test_bad_data_records(tmp_path, gpt2_tok, record, fragment):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(CircuitsError, match=fragment):
        TASK.build(gpt2_tok, n=5, seed=0, data=path)


def test_metric_matches_a_loop_over_unpadded_prompts(gpt2_model):
    """logit(IO) - logit(S), each prompt alone and unpadded: the right padding changes nothing."""
    tok = gpt2_model.tokenizer
    ds = TASK.build(tok, n=6, seed=2)
    forward = model_forward(gpt2_model)
    batched = TASK.metric(answer_logits(forward(ds.clean), ds), ds)
    reported = TASK.evaluate(forward, ds)
    assert torch.equal(reported["logit_difference"], batched)
    assert torch.equal(reported["io_wins"], (batched > 0).float())
    for i in range(len(ds)):
        a = int(ds.answer_pos[i])
        with torch.no_grad():
            logits = gpt2_model.bridge(ds.clean[i:i + 1, :a + 1])[0, -1]
        io, s = ds.metadata[i]["io"], ds.metadata[i]["s"]
        assert abs(float(batched[i]) - (float(logits[io]) - float(logits[s]))) < 1e-4


def test_ioi_gpt2_reference():
    """Wang et al.'s 26 heads with their classes; every edge joins two of them (or input / logits)."""
    from circuits.graphs.reference_circuits import reference_text
    from circuits.graphs.build import edge_names, from_node_link

    data = json.loads(reference_text("ioi-gpt2"))
    G = from_node_link(data)
    classes = Counter(n.get("head_class") for n in data["nodes"] if n["kind"] == "head")
    assert classes == {"name mover": 3, "negative name mover": 2, "backup name mover": 8, "s-inhibition": 4,
                       "induction": 4, "duplicate token": 3, "previous token": 2}
    heads = {n["id"]: n["head_class"] for n in data["nodes"] if n["kind"] == "head"}
    assert heads["a9.h9"] == heads["a9.h6"] == heads["a10.h0"] == "name mover" and heads["a7.h3"] == "s-inhibition"
    assert set(G.nodes) == set(heads) | {"input", "logits"}
    meta = data["graph"]
    assert meta["task"] == "ioi" and "Wang" in meta["source"] and "Inferred here: every edge" in meta["note"]
    assert {e.split("->")[1] for e in edge_names(G) if e.endswith("logits")} == {"logits"}
    assert all(heads[e.split("->")[0]] in ("name mover", "negative name mover", "backup name mover")
               for e in edge_names(G) if e.endswith("->logits"))
