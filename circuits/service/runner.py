"""Run one job in this process: the library's job function (``circuits.jobs``), called with the
job's checked values, a progress callback and a model loader.

It runs exactly as ``circuits <command> ...`` would (the same function, defaults and files).  A
:class:`circuits.errors.CircuitsError` becomes the job's one-line error; any other exception becomes
``Type: message`` (with its traceback in the job's log).  The result is the job's own return value,
and the log is what the CLI would print.

Models are loaded through a :class:`ModelMemo`, passed to the job as its loader: it keeps the last
model loaded in this process, so the next job on the same model skips loading.  The memo belongs
to the worker process, not to the library.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

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


def job_outcome(spec: Dict[str, Any], out_folder: Optional[str], progress: Optional[Progress] = None,
                shown_out: Optional[str] = None, reuse_models: bool = True) -> Outcome:
    """Run the job ``spec`` describes (``kind``, ``task``, ``values``, ``method_params``: a plan of
    :mod:`circuits.service.jobs`) in this process, writing into ``out_folder`` when the job writes a
    folder (``shown_out``: the folder it will be renamed to, recorded as the command's ``--out``)."""
    from circuits.errors import CircuitsError
    from circuits.jobs import check_values, command_line
    from circuits.service.jobs import job_for

    error: Optional[str] = None
    stdout = stderr = ""
    result: Any = None
    memo = model_memo() if reuse_models else None
    memo_before = len(memo.loads) if memo is not None else 0
    try:
        job = job_for(spec["kind"], spec.get("task"))
        values = check_values(job, {**spec.get("values", {}), **({"out": out_folder} if job.folder else {})})
        values["method_params"] = dict(spec.get("method_params") or {})
        shown = dict(values, out=shown_out) if job.folder and shown_out is not None else values
        command = command_line(job, shown, values["method_params"])
        if spec["kind"] == "analyze":
            command.insert(1, "analyze")
        load = memo if memo is not None else _plain_load()
        full = job.run(values, progress=progress or _no_progress, load=load, command=command)
        report = job.present(full)
        public = job.extra.get("public")
        result = public(full) if public else full
        stdout = "\n".join(report.lines) + "\n"
        stderr = "\n".join(report.warnings)
        if job.folder and shown_out is not None:
            stdout = stdout.replace(str(out_folder), str(shown_out))
    except CircuitsError as exc:
        error = str(exc)
    except Exception as exc:  # a bug in a job or a plugin: keep the server up, report it
        stderr = traceback.format_exc()
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
    loads = tuple(memo.loads[memo_before:]) if memo is not None else ()
    return Outcome(ok=error is None, error=error, stdout=stdout, stderr=stderr, result=result,
                   loaded_models=loads, pid=os.getpid())


def _no_progress(done: int, total: int, message: str) -> None:
    """No progress callback was given."""


def _plain_load():
    from circuits.models import loading

    return loading.load_model
