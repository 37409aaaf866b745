"""``circuits reference``: the reference circuits shipped with the package (no torch).

``circuits reference list`` names them; ``circuits reference NAME [--out FILE]`` prints one as
node-link JSON or writes it atomically.  The files live in ``circuits.graphs/references``.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import typer

from circuits.cli import app
from circuits.errors import CircuitsError

PACKAGE = "circuits.graphs"
FOLDER = "references"
LIST = "list"


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


@app.command("reference")
def reference_command(
    name: str = typer.Argument(..., metavar="NAME|list", help="A reference circuit's name, or `list` to list them."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSON here (atomically) instead of printing it."),
) -> None:
    """Reference circuits as node-link JSON: ground truth of the planted models and the published GPT-2 circuit."""
    if name == LIST:
        if out is not None:
            raise CircuitsError("`circuits reference list` prints the names; --out goes with a reference name")
        for known in reference_names():
            typer.echo(f"{known:16} {reference_description(known)}".rstrip())
        return
    text = reference_text(name)
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    from circuits.atomic import write_atomic

    try:
        written = write_atomic(out, text)
    except OSError as exc:
        raise CircuitsError(f"cannot write {out} ({exc.strerror or exc}); pass a writable file path") from None
    typer.echo(str(written))
