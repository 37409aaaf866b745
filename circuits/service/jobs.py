"""Job requests: checked against the jobs' own option declarations, at submission.

A job is one of the library's jobs (``circuits.jobs``): ``discover``, ``evaluate``,
``evaluate-circuit``, or ``analyze`` with a task that has an analysis job.  The fields a job takes,
their types, bounds and defaults are its :class:`circuits.options.Option` declarations (and, for
``discover``, the chosen method's own), the same ones the CLI's flags are made from.  A request is
refused with :class:`RequestError` naming the field: an unknown task or method, a number out of
range, a device, dtype or batch size that cannot be, a model the server does not serve, ``n`` over
the server's ``--max-n``.  The worker then runs the job's function with the checked values
(:mod:`circuits.service.runner`): no command line is built or parsed.

Over HTTP, options marked ``served=False`` (``--out``, ``--force``, file paths such as ``--data``
and ``--task-file``) are refused; models must be hub names (in the local cache unless the server
allows downloads), built-in names or paths under ``--models-dir``; a ``circuit`` is a run ID of the
store or a reference name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from circuits.errors import CircuitsError

KINDS = ("discover", "evaluate", "evaluate-circuit", "analyze")
TOP_LEVEL = ("task", "model", "method", "circuit")
WRITES_FOLDER = ("discover", "analyze")
DEFAULT_MAX_N = 10_000
NOT_SERVED = {"out": "not accepted: the service chooses the output folder",
              "force": "not accepted: the service chooses the output folder",
              "task_file": "task files are code, so only installed tasks are served; name one of GET /api/tasks"}
MAX_ID_CHARS = 64  # ids echoed in errors are cut to this length


class RequestError(CircuitsError):
    """A job request the service refuses: ``field`` names the part of the body, ``message`` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Limits:
    """What a server accepts beyond the declarations."""

    models_dir: Optional[Path] = None
    default_device: Optional[str] = None
    max_n: int = DEFAULT_MAX_N
    allow_downloads: bool = False


def job_for(kind: Any, task: Optional[str] = None):
    """The job a request names (``analyze`` needs the task whose analysis job runs)."""
    from circuits.jobs import analysis_jobs, jobs

    if kind not in KINDS:
        raise RequestError("kind", f"unknown job kind {kind!r}; known: {', '.join(KINDS)}")
    if kind != "analyze":
        return jobs()[kind]
    known = analysis_jobs()
    if not task:
        raise RequestError("task", f"analyze needs a task; analyses exist for: {', '.join(known) or 'none'}")
    if task not in known:
        raise RequestError("task", f"no analysis for task {task!r}; analyses exist for: {', '.join(known) or 'none'}")
    return known[task]


def served(job) -> List[Any]:
    """The options a job takes over HTTP."""
    return [o for o in job.options if o.served]


def kinds() -> Dict[str, Any]:
    """``/api/kinds``: each job kind's fields, from the declarations (``discover`` adds every installed
    method's own options, each naming its methods)."""
    from circuits.jobs import analysis_jobs, jobs

    out: Dict[str, Any] = {}
    for name, job in jobs().items():
        out[name] = {"help": job.help.split("\n")[0], "options": [o.describe() for o in served(job)]}
    out["discover"]["method_options"] = method_options()
    out["analyze"] = {"help": "A task's analysis: pictures, tables and report.html.",
                      "tasks": {t: {"help": j.help.split("\n")[0], "options": [o.describe() for o in served(j)]}
                                for t, j in analysis_jobs().items()}}
    return out


def method_options() -> List[Dict[str, Any]]:
    from circuits.registry import METHODS, plugins

    found: Dict[str, Dict[str, Any]] = {}
    for name, method in plugins(METHODS).items():
        for opt in getattr(method, "options", ()) or ():
            entry = found.setdefault(opt.name, {**opt.describe(), "methods": []})
            entry["methods"].append(name)
    return list(found.values())


def check_model(value: Any, limits: Limits) -> str:
    """The model a request names: a path under ``models_dir``, a built-in name or a hub name this server serves."""
    field = "model"
    if not isinstance(value, str) or not value.strip():
        raise RequestError(field, "must be a non-empty string")
    if limits.models_dir is not None and not Path(value).is_absolute() and ".." not in Path(value).parts:
        root = Path(limits.models_dir).resolve()
        candidate = (root / value).resolve()
        if candidate != root and candidate.is_relative_to(root) and candidate.exists():
            return str(candidate)
    if value == "planted" or value.startswith("planted-"):
        return value
    from circuits.models.loading import cached_hub_snapshot, is_repo_id

    if (not value.startswith((".", "/", "~", "\\")) and ".." not in value and not value.endswith(".gguf")
            and "\\" not in value and is_repo_id(value)):
        if limits.allow_downloads or cached_hub_snapshot(value) is not None:
            return value
        raise RequestError(field, f"{value!r} is not in the server's Hugging Face cache, and this server does not "
                                  "download models (start it with --allow-downloads, or use a model under --models-dir)")
    where = "a path under --models-dir" if limits.models_dir is not None else "a path under --models-dir (the server has none)"
    raise RequestError(field, f"{_short(value)!r} is not served; over HTTP a model is a hub name (gpt2), a built-in "
                              f"name (planted, planted-deep) or {where}")


def check_circuit(value: Any, store) -> str:
    """The circuit file of a run ID or a reference name."""
    from circuits.graphs.reference_circuits import reference_names, reference_path

    if not isinstance(value, str) or not value:
        raise RequestError("circuit", "must be a run ID or a reference name")
    folder = store.run_folder(value)
    if folder is not None:
        return str(folder)
    if value in reference_names():
        return str(reference_path(value))
    raise RequestError("circuit", f"{_short(value)!r} is neither a run ID (GET /api/runs) nor a reference name "
                                  "(GET /api/references)")


def _short(text: str) -> str:
    return text if len(text) <= MAX_ID_CHARS else text[:MAX_ID_CHARS] + "..."


@dataclass(frozen=True)
class JobPlan:
    """A checked request: the job's kind (and analysis task), its values and the method's own options."""

    kind: str
    task: Optional[str]
    values: Mapping[str, Any]
    method_params: Mapping[str, Any]

    def params(self) -> Dict[str, Any]:
        from circuits.graphs.build import jsonable

        return {"task": self.task, "values": jsonable(dict(self.values)), "method_params": dict(self.method_params)}


def _split(body: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The request's named fields (top level) and its ``options``."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise RequestError("options", "must be an object of option names and values")
    named = {}
    for key in TOP_LEVEL:
        if key in options:
            raise RequestError(f"options.{key}", f"pass {key} at the top level of the body, not in options")
        if body.get(key) is not None:
            named[key] = body[key]
    return named, dict(options)


def build_job(body: Mapping[str, Any], *, store, limits: Limits = Limits()) -> JobPlan:
    """Check a job request (``kind``, ``task``, ``model``, ``method``, ``circuit``, ``options``) against the
    job's declarations.  Raises :class:`RequestError` naming the field at fault."""
    kind = body.get("kind")
    named, options = _split(body)
    job = job_for(kind, named.get("task"))
    if kind == "analyze":
        named.pop("task")  # the task chose the analysis
    declared = {o.name: o for o in served(job)}
    hidden = {o.name for o in job.options if not o.served}
    method_given = _method_options(job, named, options)
    for key in list(options):
        if key in hidden:
            raise RequestError(f"options.{key}", NOT_SERVED.get(key, "file paths cannot be sent over HTTP"))
        if key not in declared or key in TOP_LEVEL:
            known = ", ".join(sorted(k for k in declared if k not in TOP_LEVEL))
            raise RequestError(f"options.{key}", f"unknown option of {kind}; known: {known}")
    for key in named:
        if key not in declared:
            raise RequestError(key, f"{kind} takes no {key}")
    if "task" in declared and declared["task"].argument and "task" not in named:  # no --task-file over HTTP
        raise RequestError("task", "name an installed task (GET /api/tasks)")
    if limits.default_device and "device" in declared and "device" not in options:
        options["device"] = limits.default_device
    values = _checked(job, {**named, **options}, declared, store, limits)
    return JobPlan(kind=kind, task=body.get("task") if kind == "analyze" else None, values=values,
                   method_params=method_given)


def _method_options(job, named: Mapping[str, Any], options: Dict[str, Any]) -> Dict[str, Any]:
    """The chosen method's own options, taken out of ``options`` and checked by its declarations."""
    if not job.method_options:
        return {}
    from circuits.registry import get_method

    method_name = named.get("method")
    if not isinstance(method_name, str):
        raise RequestError("method", "name a scoring method (GET /api/methods)")
    try:
        method = get_method(method_name)
    except CircuitsError as exc:
        raise RequestError("method", str(exc)) from None
    own = {o.name: o for o in getattr(method, "options", ()) or ()}
    given = {k: options.pop(k) for k in list(options) if k in own}
    for name, value in given.items():
        try:
            given[name] = own[name].check(value)
        except CircuitsError as exc:
            raise RequestError(f"options.{name}", str(exc)) from None
    return given


def _checked(job, given: Mapping[str, Any], declared, store, limits: Limits) -> Dict[str, Any]:
    values: Dict[str, Any] = {}
    for name, opt in declared.items():
        field = name if name in TOP_LEVEL else f"options.{name}"
        value = given.get(name)
        if name == "model" and value is not None:
            value = check_model(value, limits)
        elif name == "circuit" and value is not None:
            value = check_circuit(value, store)
        elif opt.type is Path and value is not None:
            raise RequestError(field, "file paths cannot be sent over HTTP")
        try:
            values[name] = opt.check(value) if value is not None or opt.required else None
        except CircuitsError as exc:
            raise RequestError(field, str(exc)) from None
        if name == "n" and values[name] is not None and values[name] > limits.max_n:
            raise RequestError(field, f"must be at most {limits.max_n} on this server (its --max-n)")
    return {k: v for k, v in values.items() if v is not None}
