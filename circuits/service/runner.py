"""Run one job in this process: invoke the CLI command's click object with the job's arguments.

The command runs exactly as ``circuits <command> <args>`` would (same options, same defaults,
same files), with its output captured.  A :class:`circuits.errors.CircuitsError` or a usage
error becomes the job's one-line error; any other exception becomes ``Type: message``.

Two process-wide hooks are installed while a job runs, and removed afterwards:

- progress: the CLI's ``ProgressBars.sink`` receives every ``(done, total, message)``;
- model reuse: ``circuits.models.load_model`` is wrapped by a :class:`ModelMemo` that keeps the
  last model loaded in this process, so the next job on the same model (and the same loading
  options) skips loading.  The memo belongs to the worker process, not to the library.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

LOG_LIMIT = 64_000

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Outcome:
    """What a job left: ``ok``; ``error`` (one line) when not; its stdout and stderr; ``result`` (parsed JSON)."""

    ok: bool
    error: Optional[str] = None
    stdout: str = ""
    stderr: str = ""
    result: Any = None
    loaded_models: Tuple[str, ...] = field(default_factory=tuple)  # models this job loaded (not reused)
    pid: int = 0  # the process that ran it

    def worker(self) -> Dict[str, Any]:
        return {"pid": self.pid, "loaded_models": list(self.loaded_models)}

    def log(self) -> str:
        text = self.stdout + (("\n" + self.stderr) if self.stderr.strip() else "")
        return text[-LOG_LIMIT:]


class ModelMemo:
    """Wraps ``load_model``: the same ``(spec, options)`` as the last call returns the model loaded then."""

    def __init__(self, load: Callable) -> None:
        self.load = load
        self.key: Optional[Tuple] = None
        self.model = None
        self.loads: List[str] = []  # specs actually loaded (for tests and logs)

    def __call__(self, spec: str = "gpt2", **kwargs):
        key = (spec, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key != self.key or self.model is None:
            self.model, self.key = None, None  # free the old model before loading the next one
            self.model = self.load(spec, **kwargs)
            self.key = key
            self.loads.append(spec)
        return self.model


_memo: Optional[ModelMemo] = None


def model_memo() -> ModelMemo:
    """This process's memo (made on first use, around the library's ``load_model``)."""
    global _memo
    if _memo is None:
        from circuits.models import loading

        _memo = ModelMemo(loading.load_model)
    return _memo


@contextlib.contextmanager
def _hooks(progress: Optional[Progress], reuse_models: bool):
    import circuits.models as models
    from circuits.cli.commands_discover import ProgressBars

    saved_sink, saved_load = ProgressBars.sink, models.load_model
    ProgressBars.sink = progress
    if reuse_models:
        models.load_model = model_memo()
    try:
        yield
    finally:
        ProgressBars.sink = saved_sink
        models.load_model = saved_load


def run_command(path: Sequence[str], args: Sequence[str], *, progress: Optional[Progress] = None,
                reuse_models: bool = True, wants_json: bool = False, shown_args: Optional[Sequence[str]] = None) -> Outcome:
    """Run ``circuits <path...> <args...>`` in this process and return its :class:`Outcome`.

    ``shown_args`` is the command line the command sees in ``sys.argv`` (recorded in a run's
    manifest), e.g. with the final run folder in place of the temporary one."""
    from circuits.errors import CircuitsError
    from circuits.service.jobs import click_errors, command_for

    errors = click_errors()
    cmd = command_for(path)
    out, err = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    error: Optional[str] = None
    memo_before = len(model_memo().loads) if reuse_models else 0
    with _hooks(progress, reuse_models), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = ["circuits", *path, *(args if shown_args is None else shown_args)]
        try:
            code = cmd.main(args=list(args), prog_name=f"circuits {' '.join(path)}", standalone_mode=False)
            if isinstance(code, int) and code != 0:  # typer.Exit(code) is returned, not raised, without standalone mode
                error = (err.getvalue().strip().splitlines() or [f"exited with code {code}"])[-1]
        except CircuitsError as exc:
            error = str(exc)
        except errors.ClickException as exc:
            error = exc.format_message().splitlines()[0] if exc.format_message() else type(exc).__name__
        except (SystemExit, _exit_types()) as exc:
            code = getattr(exc, "exit_code", getattr(exc, "code", 0))
            if code not in (0, None):
                error = (err.getvalue().strip().splitlines() or [f"exited with code {code}"])[-1]
        except Exception as exc:  # a bug in a command or a plugin: keep the server up, report it
            traceback.print_exc(file=err)
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        finally:
            sys.argv = saved_argv
    loads = tuple(model_memo().loads[memo_before:]) if reuse_models else ()
    stdout = out.getvalue()
    result = None
    if error is None and wants_json:
        lines = [line for line in stdout.splitlines() if line.strip()]
        try:
            result = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            result = None
    if error is not None and error.startswith("error: "):
        error = error[len("error: "):]
    return Outcome(ok=error is None, error=error, stdout=stdout, stderr=err.getvalue(), result=result,
                   loaded_models=loads, pid=os.getpid())


def _exit_types():
    import typer

    types = [typer.Exit]
    try:
        from typer._click.exceptions import Exit as ClickExit  # noqa: F401
    except ImportError:
        ClickExit = None
    for kind in (ClickExit,):
        if kind is not None and kind not in types:
            types.append(kind)
    return tuple(types)


def job_outcome(spec: Dict[str, Any], out_folder: Optional[str], progress: Optional[Progress] = None,
                shown_out: Optional[str] = None) -> Outcome:
    """Run a job described by ``spec`` (``kind``, ``command``, ``args``; see :mod:`circuits.service.jobs`),
    writing into ``out_folder`` when the job writes a folder (``shown_out``: the folder it will be renamed to)."""
    from circuits.service.jobs import WANTS_JSON, command_line

    args = command_line(spec, out_folder)
    shown = command_line(spec, shown_out) if shown_out is not None and out_folder is not None else None
    outcome = run_command(spec["command"], args, progress=progress, wants_json=spec.get("kind") in WANTS_JSON,
                          shown_args=shown)
    if shown is None:
        return outcome
    return replace(outcome, stdout=outcome.stdout.replace(str(out_folder), str(shown_out)))  # the folder it will be
