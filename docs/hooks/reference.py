"""MkDocs hook: the reference pages, generated from the code at every build.

``reference/cli.md`` walks the typer app's commands (groups included, the lazily built
``analyze`` group too) and writes each command's usage, description, arguments and options,
so the page cannot drift from ``circuits COMMAND --help``.  ``reference/api/*.md`` hold one
``::: module`` block per public module, which mkdocstrings renders from the docstrings.

When a public module moves, change ``API_PAGES`` below (a module that cannot be imported is
left out of its page with a warning, so ``mkdocs build --strict`` names it).
"""
from __future__ import annotations

import importlib
import inspect
import logging
from pathlib import Path
from typing import Any, Iterator

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.reference")

CLI_PAGE = "reference/cli.md"
SOURCE_TREE = "build/docs-src"  # mkdocs.yml's mkdocstrings paths

# page file -> (title, intro, public modules in reading order)
API_PAGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "reference/api/models.md": (
        "Models and the engine",
        "Loading a model spec, the computational graph, the patched forward pass and what a patch carries.",
        ("circuits.models", "circuits.engine.graph", "circuits.engine.engine", "circuits.engine.ablation",
         "circuits.engine.architectures", "circuits.names"),
    ),
    "reference/api/tasks.md": (
        "Tasks and datasets",
        "The task protocol, the prompt dataset and its batches, the registry of plugins and the built-in tasks.",
        ("circuits.data.task", "circuits.data.dataset", "circuits.data.batching", "circuits.registry",
         "circuits.tasks.greater_than", "circuits.tasks.greater_than_family", "circuits.tasks.ioi",
         "circuits.tasks.arithmetic", "circuits.tasks.mcqa", "circuits.tasks.arc", "circuits.tasks.facts"),
    ),
    "reference/api/methods.md": (
        "Scoring methods",
        "The method plugin contract (options, scores, metric), the metrics, and one module per method.",
        ("circuits.options", "circuits.methods.base", "circuits.methods.metrics", "circuits.methods.eap",
         "circuits.methods.eap_ig", "circuits.methods.activation_patching", "circuits.methods.path_patching",
         "circuits.methods.acdc"),
    ),
    "reference/api/discovery.md": (
        "Discovery, selection and faithfulness",
        "Ranking, choosing and verifying a circuit, its faithfulness, neurons, the run folder, and the jobs "
        "that the CLI and the service share.",
        ("circuits.circuit.discover", "circuits.circuit.ranking", "circuits.circuit.select",
         "circuits.circuit.faithfulness", "circuits.circuit.neurons", "circuits.circuit.run_folder",
         "circuits.jobs", "circuits.jobs.base", "circuits.errors"),
    ),
    "reference/api/graphs.md": (
        "Graphs, exports and comparison",
        "The torch-free side: circuits as networkx graphs, files, the viewer and comparisons.",
        ("circuits.graphs.build", "circuits.graphs.files", "circuits.graphs.compare", "circuits.graphs.overlap",
         "circuits.graphs.viewer", "circuits.graphs.svg", "circuits.graphs.dot", "circuits.graphs.export",
         "circuits.graphs.interop", "circuits.graphs.report", "circuits.graphs.reference_circuits"),
    ),
}


def on_files(files, config, **_: Any):
    """Add the generated reference pages to the site's files (before the nav is built)."""
    for path, text in [(CLI_PAGE, cli_page()), *((path, api_page(*spec)) for path, spec in API_PAGES.items())]:
        if files.get_file_from_path(path) is not None:
            files.remove(files.get_file_from_path(path))
        files.append(File.generated(config, path, content=text))
    return files


# --- the CLI ---------------------------------------------------------------------------------

def cli_app():
    """The click command behind the ``circuits`` console script, every sub-command registered."""
    import typer

    import circuits.cli as cli

    register = getattr(cli, "_register", None)  # the CLI registers its command modules lazily
    if callable(register):
        register()
    return typer.main.get_command(cli.app)


def commands(command, name: str, parent=None) -> Iterator[tuple[str, Any, Any]]:
    """(command path, command, context) for ``command`` and, for a group, every sub-command, depth first."""
    ctx = command.context_class(command, info_name=name, parent=parent)
    yield ctx.command_path, command, ctx
    if hasattr(command, "list_commands"):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not getattr(sub, "hidden", False):
                yield from commands(sub, sub_name, ctx)


def cli_page() -> str:
    root = cli_app()
    out = ["# Command line reference", "",
           "Generated from the code when the site is built: every command of `circuits`, with its "
           "arguments and options as `circuits COMMAND --help` prints them.", ""]
    for path, command, ctx in commands(root, "circuits"):
        out += command_section(path, command, ctx)
    return "\n".join(out) + "\n"


def command_section(path: str, command, ctx) -> list[str]:
    level = "#" * min(2 + path.count(" "), 4)
    usage = " ".join(command.collect_usage_pieces(ctx))
    out = [f"{level} `{path}`", "", "```text", f"{path} {usage}".rstrip(), "```", ""]
    text = inspect.cleandoc(command.help or "").replace("\b\n", "")
    if text:
        out += [text, ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    arguments = [p for p in params if p.param_type_name == "argument"]
    options = [p for p in params if p.param_type_name == "option"]
    if arguments:
        out += ["| argument | help |", "| --- | --- |"]
        out += [f"| `{p.metavar or p.name.upper()}` | {_cell(getattr(p, 'help', '') or '')} |" for p in arguments]
        out.append("")
    if options:
        out += ["| option | default | help |", "| --- | --- | --- |"]
        out += [f"| {_flags(p)} | {_default(p)} | {_cell(getattr(p, 'help', '') or '')} |" for p in options]
        out.append("")
    out += ["`--help`: show the command's help and exit.", ""] if not options else []
    return out


def _flags(param) -> str:
    names = [*param.opts, *param.secondary_opts]
    return ", ".join(f"`{n}`" for n in names)


def _default(param) -> str:
    if getattr(param, "required", False):
        return "required"
    default = param.default
    if callable(default) or default is None or default == () or getattr(param, "is_flag", False) and default is False:
        return ""
    return f"`{default}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# --- the Python API ---------------------------------------------------------------------------

def api_page(title: str, intro: str, modules: tuple[str, ...]) -> str:
    out = [f"# {title}", "", intro + " Generated from the docstrings when the site is built.", ""]
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            log.warning("API reference: cannot import %s (%s); update API_PAGES in docs/hooks/reference.py", name, exc)
            continue
        out += [f"::: {name}", ""]
    return "\n".join(out) + "\n"


def on_config(config, **_: Any):
    """Lay out the sources as they are installed, for mkdocstrings (its ``paths`` in mkdocs.yml)."""
    source_tree(Path(config["config_file_path"]).parent, Path(config["config_file_path"]).parent / SOURCE_TREE)
    return config


def source_tree(root: Path, out: Path) -> Path:
    """``out/circuits``: a copy of ``circuits/``, with each top-level package installed inside it copied in.

    ``tasks/`` and ``graphs/`` are installed as ``circuits.tasks`` and ``circuits.graphs`` (setuptools'
    package-dir), which griffe cannot find by walking folders; this tree puts them where their names say.
    """
    import importlib.util
    import shutil

    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.rmtree(out, ignore_errors=True)
    pkg = out / "circuits"
    shutil.copytree(root / "circuits", pkg, ignore=skip)  # copies: griffe does not follow linked folders
    for folder in sorted(root.iterdir()):
        if folder.name == "circuits" or not (folder / "__init__.py").is_file() or (pkg / folder.name).exists():
            continue
        spec = importlib.util.find_spec(f"circuits.{folder.name}")
        if spec is not None and spec.origin and Path(spec.origin).resolve().parent == folder.resolve():
            shutil.copytree(folder, pkg / folder.name, ignore=skip)
    return out
