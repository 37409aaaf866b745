"""Model specs -> local HF checkpoint folder -> TransformerBridge in compatibility mode."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from circuits.errors import CircuitsError


def _gguf_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return f"gguf/{path.stem}-{digest}"


def resolve_checkpoint(spec: str) -> str:
    """Turn a spec into something ``boot_transformers`` accepts: a local folder or a hub name."""
    from circuits.models.cache import cached_folder

    if spec.startswith("planted"):
        from circuits.models.planted import planted_checkpoint

        return str(planted_checkpoint(spec))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise CircuitsError(f"GGUF file not found: {spec}; pass the path of an existing .gguf file")
        from circuits.models.gguf import convert_gguf

        return str(cached_folder(_gguf_key(path), lambda out: convert_gguf(path, out)))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CircuitsError(f"{spec} is a folder without config.json; pass a Hugging Face checkpoint folder")
        return str(path)
    if os.sep in spec and not spec.count("/") == 1:
        raise CircuitsError(f"model path not found: {spec}; pass a hub name, a checkpoint folder or a .gguf file")
    return spec


def _boot(checkpoint: str, device: str):
    import logging

    from transformer_lens.model_bridge import TransformerBridge

    # TransformerLens and transformers are chatty on load; keep the user's terminal for results.
    for name in ("transformer_lens", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    bridge = TransformerBridge.boot_transformers(checkpoint, device=device)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    return bridge


def load_model(spec: str = "gpt2", *, device: str = "cpu"):
    """Load ``spec`` (hub name, HF folder, ``.gguf`` file, or ``planted[-variant]``) as a ``LoadedModel``."""
    from circuits.models import LoadedModel

    checkpoint = resolve_checkpoint(spec)
    is_local = Path(checkpoint).is_dir()
    try:
        bridge = _boot(checkpoint, device)
    except CircuitsError:
        raise
    except Exception as exc:  # the hub is unreachable, or the name is unknown
        if is_local:
            raise CircuitsError(f"could not load the checkpoint in {checkpoint}: {str(exc).splitlines()[0][:200]}") from exc
        raise CircuitsError(
            f"could not fetch {spec!r} from the model hub (offline or unknown name); "
            "pass a local checkpoint folder (--model ./gpt2-folder) or a .gguf file instead"
        ) from exc
    tokenizer = bridge.tokenizer
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, spec=spec, checkpoint=checkpoint)
