"""The reference circuits shipped with the package (``circuits.graphs/references/*.json``): published
circuits and the planted models' own, ready as oracles for ``compare``."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from circuits.errors import CircuitsError

PACKAGE = "circuits.graphs"
FOLDER = "references"


def _folder() -> Any:
    return resources.files(PACKAGE) / FOLDER


def reference_names() -> list[str]:
    """The names of the shipped reference circuits (file stems), sorted."""
    folder = _folder()
    if not folder.is_dir():
        return []
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))


def reference_text(name: str) -> str:
    """The JSON text of reference ``name``; CircuitsError lists the known names if there is none."""
    known = reference_names()
    if name not in known:
        listing = ", ".join(known) if known else "none are installed"
        raise CircuitsError(f"unknown reference circuit {name!r}; known: {listing} (see `circuits reference list`)")
    return (_folder() / f"{name}.json").read_text(encoding="utf-8")


def reference_description(name: str) -> str:
    """The one-line description stored in a reference's metadata (``graph.description``)."""
    data = json.loads(reference_text(name))
    meta = data.get("graph") or data.get("metadata") or {}
    return str(meta.get("description", "")).splitlines()[0] if meta.get("description") else ""


def reference_path(name: str) -> Path:
    """The file of reference ``name`` (a ``CircuitsError`` when there is none)."""
    reference_text(name)
    return Path(str(_folder() / f"{name}.json"))
