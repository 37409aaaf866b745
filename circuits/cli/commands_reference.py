"""``circuits reference``: the reference circuits shipped with the package (no torch).

``circuits reference list`` names them; ``circuits reference NAME [--out FILE]`` prints one as
node-link JSON or writes it atomically.  The files live in ``circuits.graphs/references``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from circuits.cli.app import app
from circuits.errors import CircuitsError
from circuits.graphs.reference_circuits import reference_description, reference_names, reference_text

LIST = "list"


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
