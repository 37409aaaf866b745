"""CLI commands made from the library's jobs (``circuits.jobs``): parse, run one job, present.

Each job's options become the command's flags (:func:`job_command` builds a typer command from
the declarations, as typer builds any command from a signature); ``--json`` prints the job's result
as one JSON object where the job offers it.  A job with method options takes the chosen method's
own flags too (:class:`circuits.cli.method_flags.MethodFlagsCommand`).
"""
from __future__ import annotations

import inspect
import json
import sys
from typing import Any, Optional

import typer

from circuits.cli.method_flags import MethodFlagsCommand, given_method_params
from circuits.cli.progress import ProgressBars
from circuits.jobs.base import Job, check_values
from circuits.options import Option


def _parameter(opt: Option) -> inspect.Parameter:
    annotation = opt.type if (opt.required or opt.default is not None) else Optional[opt.type]
    if opt.argument:
        default = typer.Argument(... if opt.required else opt.default, help=opt.help, show_default=False,
                                 metavar=opt.name.upper())
    else:
        flags = [opt.flag, *([opt.short] if opt.short else [])]
        if opt.type is bool and opt.default is None:
            flags = [f"{opt.flag}/--no-{opt.flag[2:]}"]
        default = typer.Option(... if opt.required else opt.default, *flags, help=opt.help,
                               show_default=opt.default is not None and not isinstance(opt.default, bool))
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def job_command(app: typer.Typer, job: Job) -> None:
    """Register ``job`` as ``circuits <job.name>``."""
    wants_json = bool(job.extra.get("json"))

    def command(ctx: typer.Context, **given: Any) -> None:
        as_json = given.pop("as_json", False)
        values = check_values(job, given)
        if job.method_options:
            values["method_params"] = given_method_params(ctx)
        bars = ProgressBars()
        try:
            from circuits.models import load_model

            result = job.run(values, progress=bars, load=load_model, command=["circuits", *sys.argv[1:]])
        finally:
            bars.close()
        report = job.present(result)
        for line in report.warnings:
            typer.echo(line, err=True)
        if as_json:
            public = job.extra.get("public")
            typer.echo(json.dumps(public(result) if public else result))
            return
        for line in report.lines:
            typer.echo(line)

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    params += [_parameter(opt) for opt in job.options]
    if wants_json:
        params.append(inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                        default=typer.Option(False, "--json", help="Print one JSON object.")))
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = job.name.replace("-", "_")
    command.__doc__ = job.help
    kwargs = {"cls": MethodFlagsCommand} if job.method_options else {}
    app.command(job.name, **kwargs)(command)
