"""Option declarations: one place says what a setting is, and the CLI, the service and the manifest
are made from it.

A method declares its own settings (``Method.options``), and each job (``circuits.jobs``) declares
its command's.  :class:`Option` knows its flag, checks and converts a value (a command-line string
or a JSON value) and describes itself as JSON for the service's ``/api/kinds``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from circuits.errors import CircuitsError


@dataclass(frozen=True)
class Option:
    """One setting of a method or a job.

    name: the key (``MethodOptions.params``, a job's values, a service request's ``options``) and, with
        dashes, the flag (``ig_steps`` -> ``--ig-steps``).
    type: ``int``, ``float``, ``str`` or ``bool``.
    default: the value when the option is not given.
    help: one line for ``--help`` and the service's ``/api/kinds``.
    choices: the allowed values (``str`` options), empty for any.
    minimum, maximum: bounds (inclusive) of a number; None for none.
    long: the flag when it is not the name with dashes (``target`` -> ``--target-faithfulness``).
    short: a one-letter alias (``-m``).
    argument: a positional argument, not a flag.
    served: False for what the service never takes from a request (``--out``, file paths).
    parse: a further check and conversion of the typed value (e.g. ``--batch-size auto``); it
        raises ``CircuitsError`` naming the flag.
    required: no default: the value must be given.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: Tuple[Any, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    long: Optional[str] = None
    short: Optional[str] = None
    argument: bool = False
    served: bool = True
    parse: Optional[Callable[[Any], Any]] = None
    required: bool = False

    @property
    def flag(self) -> str:
        return self.long or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` converted to the option's type, or a ``CircuitsError`` naming the flag (None
        stays None: not given)."""
        if value is None:
            if self.required:
                raise CircuitsError(f"{self.flag} is required")
            return None
        out = self._typed(value)
        return self.parse(out) if self.parse is not None else out

    def _typed(self, value: Any) -> Any:
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise CircuitsError(f"{self.flag} must be true or false (got {value!r})")
        if isinstance(value, bool) or not isinstance(value, (int, float, str, self.type)):
            raise CircuitsError(f"{self.flag} must be {_type_name(self.type)} (got {value!r})")
        try:
            out = value if isinstance(value, self.type) else self.type(value)
        except (TypeError, ValueError):
            raise CircuitsError(f"{self.flag} must be {_type_name(self.type)} (got {value!r})") from None
        if self.type is int and isinstance(value, float) and value != out:
            raise CircuitsError(f"{self.flag} must be a whole number (got {value!r})")
        if self.type is float and out != out:
            raise CircuitsError(f"{self.flag} must be a number (got {value!r})")
        if self.choices and out not in self.choices:
            raise CircuitsError(f"{self.flag} must be one of {', '.join(map(str, self.choices))} (got {value!r})")
        if self.minimum is not None and out < self.minimum:
            raise CircuitsError(f"{self.flag} must be at least {self.minimum:g} (got {value!r})")
        if self.maximum is not None and out > self.maximum:
            raise CircuitsError(f"{self.flag} must be at most {self.maximum:g} (got {value!r})")
        return out

    def describe(self) -> Dict[str, Any]:
        """The declaration as JSON (the service's ``/api/kinds``)."""
        default = self.default if isinstance(self.default, (str, int, float, bool, type(None))) else str(self.default)
        out = {"name": self.name, "flag": None if self.argument else self.flag, "type": _type_name(self.type, article=False),
               "default": default, "help": self.help, "required": self.required}
        if self.choices:
            out["choices"] = list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out


def _type_name(t: type, article: bool = True) -> str:
    name = {int: "integer", float: "number", str: "string", bool: "boolean"}.get(t, "path" if t.__name__.endswith("Path") else t.__name__)
    return (("an " if name[0] in "aeiou" else "a ") + name) if article else name

