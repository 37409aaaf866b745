"""Task plugins: the ``circuits.tasks`` entry point (built-ins included), broken plugins, --task-file."""
from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from circuits import registry
from circuits.errors import CircuitsError
from circuits.registry import PluginWarning
from circuits.tasks.greater_than import GreaterThan

GOOD_PLUGIN = '''
class Echo:
    name = "echo"
    description = "a third-party test task"
    def build(self, tokenizer, *, n, seed, data=None):
        raise NotImplementedError
    def metric(self, logits, dataset):
        raise NotImplementedError
'''


def make_plugin_dir(root: Path) -> Path:
    """An installed-looking distribution (a .dist-info folder) with one good and three broken task plugins."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "circuits_test_good_plugin.py").write_text(GOOD_PLUGIN)
    (root / "circuits_test_exploding_plugin.py").write_text("raise RuntimeError('boom at import')\n")
    (root / "circuits_test_bad_init.py").write_text(
        "class Task:\n    def __init__(self):\n        raise ValueError('bad constructor')\n")
    info = root / "circuits_test_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: circuits-test-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[circuits.tasks]\n"
        "echo = circuits_test_good_plugin:Echo\n"
        "missing-module = circuits_test_no_such_module:Task\n"
        "exploding = circuits_test_exploding_plugin:Task\n"
        "bad-init = circuits_test_bad_init:Task\n"
    )
    return root


def test_builtin_greater_than_uses_the_entry_point():
    eps = {ep.name: ep.value for ep in entry_points(group=registry.TASKS)}
    assert eps.get("greater-than") == "circuits.tasks.greater_than:GreaterThan"
    tasks = registry.plugins(registry.TASKS)
    assert isinstance(tasks["greater-than"], GreaterThan)
    assert isinstance(registry.get_task("greater-than"), GreaterThan)


def test_broken_plugins_warn_by_name_and_the_rest_work(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(make_plugin_dir(tmp_path / "site")))
    with pytest.warns(PluginWarning) as caught:
        tasks = registry.plugins(registry.TASKS)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3
    for name, why in [("missing-module", "circuits_test_no_such_module"), ("exploding", "boom at import"),
                      ("bad-init", "bad constructor")]:
        assert any(f"'{name}'" in m and why in m for m in messages), (name, messages)
    assert set(tasks) >= {"greater-than", "echo"}
    assert tasks["echo"].description == "a third-party test task"
    with pytest.warns(PluginWarning):
        assert registry.get_task("echo").name == "echo"


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(CircuitsError) as err:
        registry.get_task("no-such-task")
    message = str(err.value)
    assert "'no-such-task'" in message and "greater-than" in message and "\n" not in message


def _cli(*args: str, env_extra: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    code = "import sys; from circuits.cli import main; sys.argv = ['circuits', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_cli_with_broken_plugins(tmp_path):
    site = make_plugin_dir(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    res = _cli("tasks", "list", env_extra=env)
    assert res.returncode == 0, res.stderr
    names = [line.split("\t")[0] for line in res.stdout.splitlines()]
    assert "greater-than" in names and "echo" in names
    warnings = [line for line in res.stderr.splitlines() if line]
    assert len(warnings) == 3 and all(line.startswith("warning: plugin '") for line in warnings)
    assert "Traceback" not in res.stderr
    res = _cli("evaluate", "no-such-task", "--model", "gpt2", env_extra=env)
    assert res.returncode == 2
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "greater-than" in errors[0] and "echo" in errors[0]
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- --task-file
def test_task_file_variants(tmp_path):
    body = GOOD_PLUGIN.replace("class Echo:", "class Echo(Task):")
    (tmp_path / "instance.py").write_text(GOOD_PLUGIN + "\nTASK = Echo()\n")
    (tmp_path / "klass.py").write_text(GOOD_PLUGIN + "\nTASK = Echo\n")
    (tmp_path / "single.py").write_text("from circuits.data.task import Task\n" + body)
    for name in ("instance.py", "klass.py", "single.py"):
        task = registry.load_task_file(tmp_path / name)
        assert task.name == "echo" and hasattr(task, "build") and hasattr(task, "metric"), name


@pytest.mark.parametrize("content, fragment", [
    (None, "task file not found"),
    ("import circuits_no_such_module\n", "failed to import: ModuleNotFoundError"),
    ("x = 1\n", "must define TASK"),
    (GOOD_PLUGIN + GOOD_PLUGIN.replace("Echo", "Other"), "must define TASK"),
])
def test_task_file_errors(tmp_path, content, fragment):
    path = tmp_path / "task.py"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CircuitsError, match=fragment) as err:
        registry.load_task_file(path)
    assert "\n" not in str(err.value)


ANALYSIS_PLUGIN = '''
import typer

def analyze_echo(out: str = typer.Option(..., "--out", help="where the echo goes")):
    """Echo's own analysis."""
    print("echo analysis ->", out)

class Echo:
    name = "echo-analysed"
    description = "a third-party task with its own analysis"
    analysis = "circuits_test_analysis_plugin:analyze_echo"

class Lost:
    name = "lost-analysis"
    description = "a task whose analysis cannot be imported"
    analysis = "circuits_test_no_such_module:analyze"
'''


def test_a_task_owns_its_analysis(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "circuits_test_analysis_plugin.py").write_text(ANALYSIS_PLUGIN)
    info = site / "circuits_test_analysis-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: circuits-test-analysis\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[circuits.tasks]\necho-analysed = circuits_test_analysis_plugin:Echo\n"
                                           "lost-analysis = circuits_test_analysis_plugin:Lost\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    res = _cli("analyze", "--help", env_extra=env)
    assert res.returncode == 0, res.stderr
    assert "greater-than" in res.stdout and "echo-analysed" in res.stdout and "lost-analysis" not in res.stdout
    assert "lost-analysis" in res.stderr and "circuits_test_no_such_module" in res.stderr and "Traceback" not in res.stderr
    res = _cli("analyze", "echo-analysed", "--out", "here", env_extra=env)
    assert res.returncode == 0 and "echo analysis -> here" in res.stdout, res.stderr
    # no other command loads the task plugins to find the analyses
    res = _cli("--help", env_extra=env)
    assert res.returncode == 0 and "lost-analysis" not in res.stderr and "Commands" in res.stdout, res.stderr
    # the greater-than family shares greater-than's prompts, not its analysis
    res = _cli("analyze", "--help")
    assert "greater-than " in res.stdout and "greater-than-started" not in res.stdout and "ioi" not in res.stdout
