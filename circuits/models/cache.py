"""Where converted checkpoints (GGUF, planted models) are kept: ``$CIRCUITS_CACHE`` or ``~/.cache/circuits``."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_dir() -> Path:
    root = os.environ.get("CIRCUITS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "circuits"
    )
    return Path(root)


def cached_folder(key: str, build: Callable[[Path], None]) -> Path:
    """Return ``cache_dir()/key``, building it with ``build(tmp_folder)`` first if absent.

    The folder is built under a temporary name and renamed into place, so an
    interrupted build never leaves a half-written checkpoint behind.
    """
    final = cache_dir() / key
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        build(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
