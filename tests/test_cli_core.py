"""The core CLI: --version, --help without torch, `tasks list`, `evaluate` (text, --json, --data,
--task-file), the docs' example task, and one-line errors for user mistakes."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import circuits
from circuits.data.evaluation import evaluate_model
from circuits.models import load_model
from circuits.registry import load_task_file
from circuits.tasks.greater_than import TEMPLATE, GreaterThan
from cli_helpers import invoke

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("circuits")
METRIC_KEYS = {"probability_difference", "cutoff_sharpness"}


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The installed console script in a fresh process."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def docs_example() -> str:
    """The complete task file of docs/writing-a-task.md, between its example-task markers."""
    text = (ROOT / "docs" / "writing-a-task.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- example-task:start -->\s*```python\n(.*?)```\s*<!-- example-task:end -->", text, re.S)
    assert m, "docs/writing-a-task.md lost its example-task markers"
    return m.group(1)


# ---------------------------------------------------------------- no model needed
def test_console_script_and_version():
    assert SCRIPT.is_file(), "make install must create .venv/bin/circuits"
    res = run_cli("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"circuits {circuits.__version__}"


@pytest.mark.parametrize("args", [["--help"], ["evaluate", "--help"], ["tasks", "list"]])
def test_cli_does_not_import_torch_until_needed(args):
    code = (
        "import sys\n"
        "from circuits.cli import main\n"
        f"sys.argv = ['circuits', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformer_lens', 'transformers'})\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "HEAVY="


def test_help_lists_the_core_commands():
    res = run_cli("--help")
    assert res.returncode == 0
    assert "evaluate" in res.stdout and "tasks" in res.stdout


def test_tasks_list():
    res = run_cli("tasks", "list")
    assert res.returncode == 0, res.stderr
    rows = dict(line.split("\t", 1) for line in res.stdout.splitlines())
    assert "greater-than" in rows and "1732" in rows["greater-than"]


def test_unknown_task_is_a_one_line_error():
    code, _, err = invoke("evaluate", "no-such-task", "--model", "gpt2")
    assert_one_line_error(code, err, "'no-such-task'", "greater-than")


def test_missing_task_name():
    code, _, err = invoke("evaluate", "--model", "gpt2")
    assert_one_line_error(code, err, "--task-file")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _offline_env(tmp_path: Path, endpoint: str | None) -> dict:
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_HUB_OFFLINE": "",
           "TRANSFORMERS_OFFLINE": ""}
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    return env


def test_offline_hub_name_fails_fast_without_traceback(tmp_path):
    """huggingface_hub alone retries for ~30 s; the timeout makes a return of that behaviour fail."""
    res = run_cli("evaluate", "greater-than", "--model", "gpt2",
                  env=_offline_env(tmp_path, f"http://127.0.0.1:{_closed_port()}"), timeout=20)
    assert_one_line_error(res.returncode, res.stderr, "'gpt2'", "local checkpoint folder", ".gguf")
    assert res.stdout == ""


def test_offline_default_hub_fails_fast(tmp_path):
    """The same with the real default endpoint, where it is unreachable (as here and in CI)."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("huggingface.co is reachable from here")
    except OSError:
        pass
    env = _offline_env(tmp_path, None)
    env.pop("HF_ENDPOINT", None)
    res = subprocess.run([str(SCRIPT), "evaluate", "greater-than", "--model", "gpt2"], capture_output=True, text=True,
                         timeout=20, env={k: v for k, v in {**os.environ, **env}.items() if k != "HF_ENDPOINT"})
    assert_one_line_error(res.returncode, res.stderr, "'gpt2'", "huggingface.co", "local checkpoint folder")


# ---------------------------------------------------------------- on a tiny GPT-2
@pytest.fixture(scope="module")
def tiny_model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir))


def test_evaluate_json(tiny_gpt2_dir, tiny_model):
    code, out, err = invoke("evaluate", "greater-than", "--model", str(tiny_gpt2_dir), "--n", "12", "--seed", "3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"task", "model", "n", "seed", "metrics"}
    assert (result["task"], result["model"], result["n"], result["seed"]) == ("greater-than", str(tiny_gpt2_dir), 12, 3)
    assert set(result["metrics"]) == METRIC_KEYS
    task = GreaterThan()
    values = evaluate_model(task, tiny_model, task.build(tiny_model.tokenizer, n=12, seed=3))
    for name in METRIC_KEYS:
        assert set(result["metrics"][name]) == {"mean", "std"}
        v = values[name].double()
        assert result["metrics"][name]["mean"] == pytest.approx(float(v.mean()), abs=1e-6)
        assert result["metrics"][name]["std"] == pytest.approx(float(v.std()), abs=1e-6)


def test_evaluate_text(tiny_gpt2_dir):
    code, out, err = invoke("evaluate", "greater-than", "--model", str(tiny_gpt2_dir), "--n", "5")
    assert code == 0, err
    assert "5 prompts" in out and "seed 0" in out
    for name in METRIC_KEYS:
        assert re.search(rf"{name}\s+[+-]\d\.\d{{4}} ± \d\.\d{{4}}", out), out


def test_evaluate_data_file(tmp_path, tiny_gpt2_dir):
    data = tmp_path / "prompts.jsonl"
    rows = [{"noun": "war", "century": 17, "yy": 32}, {"clean": TEMPLATE.format(noun="siege", xx=14, yy=55)}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    code, out, err = invoke("evaluate", "greater-than", "--model", str(tiny_gpt2_dir), "--data", str(data), "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 2
    data.write_text('{"noun": "war"}\n')
    code, _, err = invoke("evaluate", "greater-than", "--model", str(tiny_gpt2_dir), "--data", str(data))
    assert_one_line_error(code, err, "prompts.jsonl")


def test_docs_example_task_runs(tmp_path, tiny_gpt2_dir, tiny_model):
    source = docs_example()
    assert len(source.splitlines()) < 40
    path = tmp_path / "indirect_object.py"
    path.write_text(source)
    res = run_cli("evaluate", "--task-file", str(path), "--model", str(tiny_gpt2_dir), "--n", "8", "--json", timeout=120)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert (result["task"], result["n"], result["seed"]) == ("indirect-object", 8, 0)
    # the reported metric is the example's metric on the model, recomputed here
    task = load_task_file(path)
    ds = task.build(tiny_model.tokenizer, n=8, seed=0)
    assert ds.clean.shape == ds.corrupted.shape and len(ds) == 8
    with torch.no_grad():
        logits = tiny_model.bridge(ds.clean)[torch.arange(8), ds.answer_pos]
    expected = task.metric(logits, ds).double()
    assert result["metrics"]["metric"]["mean"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert result["metrics"]["metric"]["std"] == pytest.approx(float(expected.std()), abs=1e-5)
