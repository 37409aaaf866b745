"""The README and the documentation site's sources: short README with the set-up commands, links that resolve,
every page in the nav, and a CLI reference generated from the commands (the full build is `make docs`)."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETUP = ("make install && .venv/bin/circuits discover greater-than --model planted --method eap-ig --out runs/planted",
         "make test")


def test_readme_is_short_and_keeps_the_setup_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text) <= 15_000, f"README.md is {len(text)} characters; move detail into docs/"
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert blocks and all(command in blocks[0].splitlines() for command in SETUP), blocks[:1]


def test_readme_links_resolve():
    text = README.read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]
    assert targets
    missing = [t for t in targets if t and not (ROOT / t).exists()]
    assert not missing, missing


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_nav_and_every_nav_page_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = _nav_pages(config["nav"])
    generated = [p for p in nav if p.startswith("reference/")]  # written by docs/hooks/reference.py at build time
    written = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")
                     if "hooks" not in p.parts)
    assert sorted(set(nav) - set(generated)) == written
    hook = _hook()
    assert sorted(generated) == sorted([hook.CLI_PAGE, *hook.API_PAGES])


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_generated_from_every_command():
    page = _hook().cli_page()
    for command in ("evaluate", "discover", "evaluate-circuit", "export", "compare", "reference", "serve",
                    "analyze greater-than", "tasks list", "methods list", "runs list", "runs show"):
        assert f"`circuits {command}`" in page, command
    assert "| `--target-faithfulness` |" in page and "| `--model`, `-m` |" in page
