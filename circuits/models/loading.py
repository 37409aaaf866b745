"""Model specs -> local HF checkpoint folder -> TransformerBridge in compatibility mode."""
from __future__ import annotations

import hashlib
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from circuits.errors import CircuitsError


@dataclass(frozen=True)
class LoadedModel:
    """A booted model: the bridge (compatibility mode, raw weights), its tokenizer and the spec it came from."""

    bridge: Any
    tokenizer: Any
    spec: str
    checkpoint: str


def _gguf_key(path: Path) -> str:
    st = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:12]
    return f"gguf/{path.stem}-{digest}"


HUB_TIMEOUT_S = 2.5


def hub_endpoint() -> tuple[str, int]:
    """(host, port) of the model hub: ``$HF_ENDPOINT`` or https://huggingface.co."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _offline_mode() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (name lookup included).

    huggingface_hub retries an unreachable hub five times with back-off (~30 s); this check
    lets an offline user hear at once that they must pass a local folder or file.
    """
    if _offline_mode():
        return False
    host, port = hub_endpoint()
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the whole probe runs in a thread we stop waiting for
    thread = threading.Thread(target=probe, name="circuits-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def cached_hub_snapshot(repo_id: str) -> Optional[str]:
    """The local HF cache's snapshot folder of ``repo_id`` if it holds a config and weights, else None."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, incomplete, or not a valid repo id
        return None
    weights = any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.safetensors.index.json"))
    return str(folder) if (folder / "config.json").is_file() and weights else None


def is_repo_id(spec: str) -> bool:
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(spec)
    except Exception:
        return False
    return spec.count("/") <= 1


def resolve_checkpoint(spec: str) -> str:
    """Turn a spec into something ``boot_transformers`` accepts: a local folder or a reachable hub name."""
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
    if spec.startswith((".", "/", "~")) or not is_repo_id(spec):
        raise CircuitsError(f"model path not found: {spec}; pass a hub name, a checkpoint folder or a .gguf file")
    snapshot = cached_hub_snapshot(spec)
    if snapshot is not None:
        return snapshot
    if not hub_reachable():
        host, _ = hub_endpoint()
        why = "offline mode is on (HF_HUB_OFFLINE)" if _offline_mode() else f"the model hub ({host}) cannot be reached"
        raise CircuitsError(
            f"cannot load {spec!r}: it is not in the local Hugging Face cache and {why}; "
            f"pass a local checkpoint folder (--model ./{spec.split('/')[-1]}) or a .gguf file (--model model.gguf) instead"
        )
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
