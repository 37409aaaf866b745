"""What a job is: its option declarations, how it runs, and how its result reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from circuits.errors import CircuitsError
from circuits.options import Option

# progress(done, total, message); load(spec, device=...) -> LoadedModel
Progress = Callable[[int, int, str], None]
Loader = Callable[..., Any]


@dataclass(frozen=True)
class Report:
    """What the CLI prints for a result: lines on stdout, warnings on stderr."""

    lines: Tuple[str, ...] = ()
    warnings: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """One job kind.

    name: the CLI command (``discover``) and the service's ``kind``.
    help: the command's help text.
    options: its declarations, in the order ``--help`` shows them.
    run: ``run(values, *, progress, load, command) -> dict``: ``values`` holds every declared option
        (checked, defaults filled) and, for a job with ``method_options``, ``method_params``;
        ``command`` is the command line recorded in the files it writes.
    present: ``present(result) -> Report``.
    folder: the job writes the folder ``values["out"]``.
    method_options: the job also takes the chosen method's own options.
    """

    name: str
    help: str
    options: Tuple[Option, ...]
    run: Callable[..., Dict[str, Any]]
    present: Callable[[Dict[str, Any]], Report]
    folder: bool = False
    method_options: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(name)


def check_values(job: Job, given: Mapping[str, Any]) -> Dict[str, Any]:
    """Every option of ``job``: the given value checked (``Option.check``), else its default.

    A name the job does not declare is a ``CircuitsError``; so is a missing required one."""
    declared = {o.name: o for o in job.options}
    for name in given:
        if name not in declared:
            raise CircuitsError(f"{job.name} has no option {name!r}; its options: {', '.join(declared)}")
    out = {}
    for name, opt in declared.items():
        value = given.get(name)
        out[name] = opt.check(value) if value is not None else (opt.check(opt.default) if opt.required else opt.default)
    return out


def command_line(job: Job, values: Mapping[str, Any], method_params: Optional[Mapping[str, Any]] = None) -> List[str]:
    """The ``circuits ...`` command line that runs ``job`` with ``values`` (what differs from the defaults)."""
    words: List[str] = ["circuits", job.name]
    positional: List[str] = []
    for opt in job.options:
        value = values.get(opt.name)
        if value is None or (value == opt.default and not opt.required):
            continue
        if opt.argument:
            positional.append(str(value))
        elif opt.type is bool:
            words.append(opt.flag if value else "--no-" + opt.flag[2:])
        else:
            words += [opt.flag, str(value)]
    for name, value in (method_params or {}).items():
        words += ["--" + name.replace("_", "-"), str(value)]
    return words[:2] + positional + words[2:]


def given_only(values: Mapping[str, Any], names: Sequence[str]) -> Dict[str, Any]:
    return {k: values[k] for k in names if values.get(k) is not None}
