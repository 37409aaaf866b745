"""The flags of the methods' own options, made from their declarations (``Method.options``).

``discover`` (and any command built with :class:`MethodFlagsCommand`) gets one flag per declared
option of every installed method.  The flags are added when the command's parameters are first
asked for (its ``--help`` or a call), so ``circuits --help`` loads no method.  Values not given stay
unset, so each method's own default applies; the given ones reach the command as ``method_params``
in the click context's ``meta``.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Dict, List, Optional, Tuple

import typer
from typer.core import TyperCommand
from typer.main import _get_params_name_from_function

from circuits.methods.base import Option
from circuits.registry import METHODS, plugins as find_plugins

META_KEY = "method_params"


def method_declarations() -> Dict[str, Tuple[Option, List[str]]]:
    """Option name -> (its declaration, the methods that declare it), over every installed method."""
    found: Dict[str, Tuple[Option, List[str]]] = {}
    for name, method in find_plugins(METHODS).items():
        for opt in getattr(method, "options", ()) or ():
            if opt.name in found:
                first, owners = found[opt.name]
                if first.type is not opt.type:
                    warnings.warn(f"method {name!r} declares {opt.flag} as {opt.type.__name__}, but "
                                  f"{owners[0]!r} declares it as {first.type.__name__}; {name!r}'s is ignored",
                                  stacklevel=2)
                    continue
                owners.append(name)
            else:
                found[opt.name] = (opt, [name])
    return found


def _help(opt: Option, owners: List[str]) -> str:
    own = ", ".join(owners)
    default = f"(default: {opt.default})" if len(owners) == 1 else "(default: the method's own)"
    text = opt.help if opt.help.startswith(own) else f"{own}: {opt.help}"
    if opt.choices:
        text += f" One of: {', '.join(map(str, opt.choices))}."
    return f"{text} {default}"


def _typer_params(declared: List[Tuple[Option, List[str]]]) -> list:
    """typer's own parameters for the declarations (built from a signature, as typer builds any command)."""
    def holder(**kwargs):  # pragma: no cover - never called; its signature carries the options
        return kwargs

    holder.__signature__ = inspect.Signature([
        inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[opt.type],
                          default=typer.Option(None, (f"{opt.flag}/--no-{opt.flag[2:]}" if opt.type is bool else opt.flag),
                                               help=_help(opt, owners), show_default=False,
                                               rich_help_panel="Options of the methods"))
        for opt, owners in declared])
    holder.__annotations__ = {opt.name: Optional[opt.type] for opt, _ in declared}
    params, _ = _get_params_name_from_function(holder)
    return params


class MethodFlagsCommand(TyperCommand):
    """A typer command that also takes the declared options of every installed method."""

    _extra: Optional[list] = None

    def _method_params(self) -> list:
        if self._extra is None:
            taken = {n for p in self.params for n in [p.name, *getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]}
            keep = []
            for name, (opt, owners) in method_declarations().items():
                if name in taken or opt.flag in taken:
                    warnings.warn(f"method option {opt.flag} of {', '.join(owners)} clashes with the command's own "
                                  "flag and is left out", stacklevel=2)
                    continue
                keep.append((opt, owners))
            self._extra = _typer_params(keep)
        return self._extra

    def get_params(self, ctx) -> list:
        return [*super().get_params(ctx), *self._method_params()]

    def invoke(self, ctx) -> Any:
        given = {}
        for p in self._method_params():
            value = ctx.params.pop(p.name, None)
            if value is not None:
                given[p.name] = value
        ctx.meta[META_KEY] = given
        return super().invoke(ctx)


def given_method_params(ctx) -> Dict[str, Any]:
    """The method options given on the command line of ``ctx`` (name -> value)."""
    return dict(ctx.meta.get(META_KEY, {}))
