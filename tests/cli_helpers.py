"""Running the CLI inside the test process, and checking its user errors."""
from __future__ import annotations

import contextlib
import io
import sys

import pytest


def invoke(*args: str):
    """``circuits.cli.main`` in this process (it reuses the loaded torch): (exit code, stdout, stderr)."""
    from circuits.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["circuits", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def assert_user_error(code: int, err: str, fragment: str) -> None:
    """Exit code 2 and one ``error: ...`` line naming ``fragment``, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
