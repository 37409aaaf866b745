"""Job kinds and their options, read from the CLI's own command definitions.

A job is one CLI command run in-process: ``discover``, ``evaluate``, ``evaluate-circuit`` or
``analyze TASK``.  The options a job accepts, and their defaults, are the command's click
parameters (``typer.main.get_command``), named by their long flag with underscores for dashes
(``--top-k`` -> ``top_k``), so an option added to the CLI is served without editing this module.

:func:`build_job` checks a request and turns it into the command line the worker runs.  The
service owns some options (``--out``, ``--force``, ``--json``); others are refused over HTTP:
``--task-file`` (a task file is code) and any other file path.  Models must be hub names,
built-in names or paths under ``--models-dir``; a ``circuit`` is a run ID of the store or the
name of a reference circuit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from circuits.errors import CircuitsError

KINDS = ("discover", "evaluate", "evaluate-circuit", "analyze")
OWNED = {"out": "the service chooses the output folder", "force": "the service chooses the output folder",
         "json": "the service always asks for JSON"}
REFUSED = {"task_file": "task files are code, so only installed tasks are served; name one of GET /api/tasks"}
TOP_LEVEL = ("task", "model", "method", "circuit")
WRITES_FOLDER = ("discover", "analyze")
WANTS_JSON = ("evaluate", "evaluate-circuit")


class RequestError(CircuitsError):
    """A job request the service refuses: ``field`` names the part of the body, ``message`` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class OptionSpec:
    """One parameter of a command: its key in ``options``, its flag, default and help."""

    key: str
    flag: Optional[str]  # None for a positional argument
    default: Any
    help: str
    is_flag: bool
    is_path: bool
    multiple: bool
    required: bool
    secondary: Optional[str] = None  # the --no-x of a boolean --x/--no-x

    def public(self) -> Dict[str, Any]:
        default = self.default
        if isinstance(default, Path):
            default = str(default)
        if isinstance(default, tuple):
            default = list(default)
        return {"name": self.key, "flag": self.flag, "default": default, "help": self.help, "required": self.required}


def root_command():
    """The CLI's click group with every command registered."""
    import typer.main

    from circuits.cli import _register, app

    _register()
    return typer.main.get_command(app)


def command_path(kind: str, task: Optional[str]) -> Tuple[str, ...]:
    """The CLI words of a job: ``("discover",)`` or ``("analyze", "greater-than")``."""
    if kind not in KINDS:
        raise RequestError("kind", f"unknown job kind {kind!r}; known: {', '.join(KINDS)}")
    if kind != "analyze":
        return (kind,)
    known = analysis_tasks()
    if not task:
        raise RequestError("task", f"analyze needs a task; analyses exist for: {', '.join(known)}")
    if task not in known:
        raise RequestError("task", f"no analysis for task {task!r}; analyses exist for: {', '.join(known)}")
    return ("analyze", task)


def analysis_tasks() -> List[str]:
    """The tasks ``analyze`` has a command for (the group finds them when asked: ``list_commands``)."""
    return sorted(root_command().get_command(None, "analyze").list_commands(None))


def command_for(path: Sequence[str]):
    cmd = root_command()
    for word in path:
        cmd = cmd.get_command(None, word)
    return cmd


def click_errors():
    """The exception classes of the click that typer uses (typer >= 0.26 ships its own copy of click)."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer: the click package
        from click import exceptions
    return exceptions


def _is_path(param) -> bool:
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is not None:
        annotation = getattr(descriptor, "annotation", None)
        return isinstance(annotation, type) and issubclass(annotation, Path)
    kind = getattr(param, "type", None)
    return type(kind).__name__ == "Path"


def command_params(cmd) -> list:
    """A click command's parameters, the methods' own options included (``MethodFlagsCommand``)."""
    extra = getattr(cmd, "_method_params", None)
    return [*cmd.params, *(extra() if extra is not None else [])]


def option_specs(cmd) -> List[OptionSpec]:
    """The parameters of click command ``cmd`` as :class:`OptionSpec` (``--help`` and eager flags left out)."""
    specs = []
    for param in command_params(cmd):
        if getattr(param, "is_eager", False) or param.name == "help":
            continue
        is_path = _is_path(param)
        if getattr(param, "param_type_name", "") == "argument":
            specs.append(OptionSpec(key=param.name, flag=None, default=param.default, help=getattr(param, "help", "") or "",
                                    is_flag=False, is_path=is_path, multiple=param.nargs != 1, required=param.required))
            continue
        longs = [o for o in param.opts if o.startswith("--")]
        flag = longs[0] if longs else param.opts[0]
        secondary = next((o for o in param.secondary_opts if o.startswith("--")), None)
        specs.append(OptionSpec(key=flag.lstrip("-").replace("-", "_"), flag=flag, default=param.default,
                                help=param.help or "", is_flag=bool(param.is_flag), is_path=is_path,
                                multiple=bool(param.multiple), required=param.required, secondary=secondary))
    return specs


def served_options(kind: str, task: Optional[str] = None) -> List[OptionSpec]:
    """The options a job of ``kind`` takes over HTTP (the command's, less those the service owns or refuses)."""
    if kind == "analyze" and not task:
        task = next(iter(analysis_tasks()), None)
    specs = option_specs(command_for(command_path(kind, task)))
    return [s for s in specs if s.key not in OWNED and s.key not in REFUSED]


def check_model(value: Any, models_dir: Optional[Path]) -> str:
    """The command-line value for model ``value``: a path under ``models_dir``, a built-in name or a hub name."""
    field = "model"
    if not isinstance(value, str) or not value.strip():
        raise RequestError(field, "must be a non-empty string")
    if models_dir is not None and not Path(value).is_absolute() and ".." not in Path(value).parts:
        root = Path(models_dir).resolve()
        candidate = (root / value).resolve()
        if candidate != root and candidate.is_relative_to(root) and candidate.exists():
            return str(candidate)
    if value == "planted" or value.startswith("planted-"):
        return value
    from circuits.models.loading import _is_repo_id

    if (not value.startswith((".", "/", "~", "\\")) and ".." not in value and not value.endswith(".gguf")
            and "\\" not in value and _is_repo_id(value)):
        return value
    where = "a path under --models-dir" if models_dir is not None else "a path under --models-dir (the server has none)"
    raise RequestError(field, f"{value!r} is not served; over HTTP a model is a hub name (gpt2), a built-in name "
                              f"(planted, planted-deep) or {where}")


def check_circuit(value: Any, store) -> str:
    """The path of circuit ``value``: a run ID of ``store`` or the name of a reference circuit."""
    from circuits.cli.commands_reference import reference_names

    if not isinstance(value, str) or not value:
        raise RequestError("circuit", "must be a run ID (GET /api/runs) or a reference name (GET /api/references)")
    folder = store.run_folder(value) if "/" not in value and ".." not in value else None
    if folder is not None:
        return str(folder)
    if value in reference_names():
        return str(reference_path(value))
    raise RequestError("circuit", f"{value!r} is neither a run ID (GET /api/runs) nor a reference name (GET /api/references)")


def reference_path(name: str) -> Path:
    from importlib import resources

    from circuits.cli.commands_reference import FOLDER, PACKAGE

    return Path(str(resources.files(PACKAGE) / FOLDER / f"{name}.json"))


def _args(spec: OptionSpec, value: Any) -> List[str]:
    field = f"options.{spec.key}"
    if spec.is_flag:
        if not isinstance(value, bool):
            raise RequestError(field, f"must be true or false (got {value!r})")
        if value:
            return [spec.flag]
        return [spec.secondary] if spec.secondary else []
    values = value if spec.multiple and isinstance(value, list) else [value]
    out: List[str] = []
    for v in values:
        if isinstance(v, (dict, list)) or v is None:
            raise RequestError(field, f"must be a single value (got {v!r})")
        text = ("true" if v else "false") if isinstance(v, bool) else str(v)
        out += [text] if spec.flag is None else [spec.flag, text]
    return out


@dataclass(frozen=True)
class JobPlan:
    """A checked request: the command's words, its arguments (without ``--out``) and the options as given."""

    kind: str
    path: Tuple[str, ...]
    args: Tuple[str, ...]
    options: Mapping[str, Any]

    def params(self) -> Dict[str, Any]:
        return {"command": list(self.path), "args": list(self.args), "options": dict(self.options)}


def build_job(body: Mapping[str, Any], *, store, models_dir: Optional[Path] = None,
              default_device: Optional[str] = None) -> JobPlan:
    """Check a job request (``kind``, ``task``, ``model``, ``method``, ``circuit``, ``options``) and plan its command line.

    Raises :class:`RequestError` naming the field at fault."""
    kind = body.get("kind")
    options = dict(body.get("options") or {})
    merged: Dict[str, Any] = {}
    for key in TOP_LEVEL:
        if key in options:
            raise RequestError(f"options.{key}", f"pass {key} at the top level of the body, not in options")
        if body.get(key) is not None:
            merged[key] = body[key]
    path = command_path(kind, merged.get("task"))
    if kind == "analyze":
        merged.pop("task", None)  # the task chose the sub-command
    elif kind in ("discover", "evaluate") and "task" not in merged:
        raise RequestError("task", "name an installed task (GET /api/tasks)")
    if kind == "evaluate-circuit" and "circuit" not in merged:
        raise RequestError("circuit", "evaluate-circuit needs a circuit: a run ID or a reference name")
    cmd = command_for(path)
    specs = {s.key: s for s in option_specs(cmd)}
    if default_device and "device" in specs and "device" not in options:
        options["device"] = default_device
    for key in options:
        if key in REFUSED:
            raise RequestError(f"options.{key}", REFUSED[key])
        if key in OWNED and key in specs:
            raise RequestError(f"options.{key}", f"not accepted: {OWNED[key]}")
        if key not in specs:
            known = ", ".join(sorted(k for k in specs if k not in OWNED and k not in REFUSED))
            raise RequestError(f"options.{key}", f"unknown option of {' '.join(path)}; known: {known}")
    for key in merged:
        if key not in specs:
            raise RequestError(key, f"{' '.join(path)} takes no {key}")
    merged.update(options)

    argv: List[str] = []
    positional: List[str] = []
    for key, value in merged.items():
        spec = specs[key]
        if value is None:
            continue
        if key == "model":
            value = check_model(value, models_dir)
        elif key == "circuit":
            value = check_circuit(value, store)
        elif spec.is_path:
            raise RequestError(f"options.{key}", "file paths cannot be sent over HTTP")
        (positional if spec.flag is None else argv).extend(_args(spec, value))
    if kind in WANTS_JSON and "json" in specs:
        argv.append(specs["json"].flag)
    args = argv + (["--", *positional] if positional else [])
    _dry_parse(cmd, path, args, specs, needs_out=kind in WRITES_FOLDER)
    return JobPlan(kind=kind, path=path, args=tuple(args), options=merged)


def _dry_parse(cmd, path, args, specs: Mapping[str, OptionSpec], *, needs_out: bool) -> None:
    """Let click parse the command line (types, choices, required options) without running the command."""
    errors = click_errors()
    trial = list(args)
    if needs_out:
        trial = ["--out", "/nonexistent/circuits-dry-run", *trial]
    by_name = {p.name: p for p in command_params(cmd)}
    try:
        cmd.make_context(" ".join(path), trial, resilient_parsing=False)
    except errors.BadParameter as exc:
        key = _key_of(exc.param, specs, by_name)
        message = "required" if isinstance(exc, errors.MissingParameter) else exc.message
        raise RequestError(f"options.{key}" if key not in TOP_LEVEL else key, message) from None
    except errors.UsageError as exc:
        raise RequestError("options", exc.format_message().splitlines()[0]) from None


def _key_of(param, specs: Mapping[str, OptionSpec], by_name) -> str:
    if param is None:
        return "options"
    for spec in specs.values():
        if spec.flag is None and spec.key == param.name:
            return spec.key
        if spec.flag is not None and spec.flag in getattr(param, "opts", ()):
            return spec.key
    return param.name


def command_line(plan_params: Mapping[str, Any], out: Optional[str] = None) -> List[str]:
    """The job's arguments for its command, with ``--out`` first when the job writes a folder."""
    args = list(plan_params["args"])
    return (["--out", out] if out is not None else []) + args
