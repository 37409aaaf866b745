"""``circuits serve`` without workers: the API's checks, the store, and ``circuits runs`` (fast, no model runs).

The jobs that really run (planted discover over HTTP, ten at once, kill -9, cancel, Ray) are in
``test_service_live.py``.
"""
from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (installed by `make install`)")

from fastapi.testclient import TestClient  # noqa: E402

from circuits.service.app import ServiceConfig, create_app  # noqa: E402
from circuits.graphs.reference_circuits import reference_path  # noqa: E402
from circuits.service.jobs import served  # noqa: E402
from circuits.service.store import INTERRUPTED, Store  # noqa: E402
from cli_helpers import assert_user_error, invoke  # noqa: E402

DISCOVER = {"kind": "discover", "task": "greater-than", "model": "planted", "method": "eap-ig", "options": {"n": 8}}


def fake_run(store: Store, *, faithfulness: float = 0.5) -> str:
    """A run in ``store`` made the way the dispatcher makes one (tmp folder, publish), from the planted reference."""
    job = store.add_job("discover", {"command": ["discover"], "args": [], "options": {}})
    assert store.claim_next().id == job.id
    tmp = store.tmp_folder(job.id)
    shutil.copy(reference_path("planted"), tmp / "circuit.json")
    (tmp / "scores.tsv").write_text("edge\tscore\n", encoding="utf-8")
    manifest = {"task": "greater-than", "model": "planted", "method": "eap", "faithfulness": faithfulness,
                "edges_kept": 5, "edges_total": 110}
    (tmp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert store.publish(job.id, "discover")
    return job.id


@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(ServiceConfig(store=tmp_path / "store", workers=0))) as c:
        yield c


def one_line_422(response, field: str) -> str:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail.startswith(field + ":"), detail
    return detail


def test_the_cli_and_the_service_take_the_same_declared_options():
    """Both doors are made from the jobs' declarations: every served option is a CLI flag with the same default."""
    import typer.main

    from circuits.cli import _register, app
    from circuits.jobs import jobs
    from circuits.service.jobs import kinds

    _register()
    root = typer.main.get_command(app)
    listed = kinds()
    for name, job in jobs().items():
        cmd = root.commands[name]
        cli = {p.name: p for p in [*cmd.params, *getattr(cmd, "_method_params", list)()] if p.name != "as_json"}
        opts = {o["name"]: o for o in listed[name]["options"]}
        assert set(opts) == {o.name for o in served(job)}
        for key, opt in opts.items():
            assert key in cli, (name, key)
            default = cli[key].default
            assert (str(default) if default is not None else None) == (str(opt["default"]) if opt["default"] is not None else None), (name, key)
        assert not {"out", "force", "task_file", "data"} & set(opts)  # the service owns these, or refuses them
    method_opts = {o["name"]: o for o in listed["discover"]["method_options"]}
    assert method_opts["ig_steps"]["default"] == 5 and method_opts["ig_steps"]["methods"] == ["eap-ig"]
    assert {"tau", "max_tests", "max_passes", "path_threshold"} <= set(method_opts)
    discover_flags = {p.name for p in root.commands["discover"]._method_params()}
    assert set(method_opts) <= discover_flags  # the CLI takes every method's own options as flags
    assert "greater-than" in listed["analyze"]["tasks"]


def test_health_lists_and_openapi(client):
    assert client.get("/api/health").json()["status"] == "ok"
    assert "greater-than" in {t["name"] for t in client.get("/api/tasks").json()}
    assert {"eap", "eap-ig"} <= {m["name"] for m in client.get("/api/methods").json()}
    assert "planted" in {r["name"] for r in client.get("/api/references").json()}
    kinds = client.get("/api/kinds").json()
    assert set(kinds) == {"discover", "evaluate", "evaluate-circuit", "analyze"}
    assert {"name": "n", "flag": "--n", "default": 100} .items() <= next(o for o in kinds["discover"]["options"] if o["name"] == "n").items()
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/jobs", "/api/jobs/{job_id}/events", "/api/runs/{run_id}/files/{name}", "/api/compare"):
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_job_queued_listed_and_cancelled(client):
    r = client.post("/api/jobs", json=DISCOVER)
    assert r.status_code == 201 and r.json()["state"] == "queued"
    job_id = r.json()["id"]
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["params"]["values"] == {"task": "greater-than", "model": "planted", "method": "eap-ig", "n": 8}
    assert [j["id"] for j in client.get("/api/jobs?state=queued").json()] == [job_id]
    assert client.delete(f"/api/jobs/{job_id}").json() == {"id": job_id, "state": "cancelled"}
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and job["finished"] and job["error"] == "cancelled while queued"
    assert client.delete(f"/api/jobs/{job_id}").status_code == 409
    assert client.delete("/api/jobs/nope").status_code == 404 and client.get("/api/jobs/nope").status_code == 404
    with client.stream("GET", f"/api/jobs/{job_id}/events") as events:  # a finished job: one event, then the end
        lines = [line for line in events.iter_lines() if line]
    assert lines[0] == "event: end" and json.loads(lines[1].removeprefix("data: "))["state"] == "cancelled"


@pytest.mark.parametrize("body, field", [
    ({**DISCOVER, "options": {"n": "many"}}, "options.n"),
    ({**DISCOVER, "options": {"bogus": 1}}, "options.bogus"),
    ({**DISCOVER, "method": None}, "method"),
    ({**DISCOVER, "task": None}, "task"),
    ({**DISCOVER, "kind": "train"}, "kind"),
    ({**DISCOVER, "extra": 1}, "extra"),
    ({**DISCOVER, "options": {"out": "/tmp/x"}}, "options.out"),
    ({**DISCOVER, "options": {"model": "planted"}}, "options.model"),
    ({"kind": "evaluate", "task": "greater-than", "model": "planted", "options": {"data": "/etc/passwd"}}, "options.data"),
    ({"kind": "evaluate-circuit", "circuit": "no-such-run"}, "circuit"),
    ({"task": "greater-than"}, "kind"),
])
def test_bad_bodies_get_422_naming_the_field(client, body, field):
    one_line_422(client.post("/api/jobs", json=body), field)


@pytest.mark.parametrize("body, field, says", [
    ({**DISCOVER, "task": "no-such-task"}, "task", "unknown task"),
    ({**DISCOVER, "method": "no-such-method"}, "method", "unknown method"),
    ({**DISCOVER, "options": {"n": -5}}, "options.n", "at least 1"),
    ({**DISCOVER, "options": {"n": 0}}, "options.n", "at least 1"),
    ({**DISCOVER, "options": {"n": 10 ** 12}}, "options.n", "--max-n"),
    ({**DISCOVER, "options": {"holdout": 5.0}}, "options.holdout", "at most"),
    ({**DISCOVER, "options": {"device": "toaster"}}, "options.device", "torch device"),
    ({**DISCOVER, "options": {"device": "cuda:7"}}, "options.device", "cuda"),
    ({**DISCOVER, "options": {"dtype": "float8"}}, "options.dtype", "one of"),
    ({**DISCOVER, "options": {"batch_size": "lots"}}, "options.batch_size", "auto"),
    ({**DISCOVER, "options": {"batch_size": -3}}, "options.batch_size", "auto"),
    ({**DISCOVER, "options": {"ig_steps": 0}}, "options.ig_steps", "at least 1"),
    ({**DISCOVER, "options": {"tau": 0.1}}, "options.tau", "unknown option"),  # acdc's, not eap-ig's
    ({**DISCOVER, "model": "someone/not-a-cached-model"}, "model", "--allow-downloads"),
    ({"kind": "evaluate", "task": "nope", "model": "planted"}, "task", "unknown task"),
    ({"kind": "analyze", "task": "ioi", "model": "planted"}, "task", "no analysis"),
])
def test_bad_submissions_are_refused_at_submission(client, body, field, says):
    """Each is refused with 422 naming the field, and nothing is queued."""
    assert says in one_line_422(client.post("/api/jobs", json=body), field)
    assert client.get("/api/jobs").json() == []


def test_deep_bodies_long_ids_and_slow_bodies(client):
    deep = b'{"kind": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    one_line_422(client.post("/api/jobs", content=deep, headers={"content-type": "application/json"}), "body")
    long_id = "x" * 10_000
    r = client.get(f"/api/jobs/{long_id}")
    assert r.status_code == 404 and len(r.json()["detail"]) < 200
    assert len(client.get(f"/api/runs/{long_id}").json()["detail"]) < 200


def test_a_body_shorter_than_its_length_is_dropped_quickly(tmp_path, monkeypatch):
    """A client that announces more body than it sends is answered (408) within the body timeout, not held."""
    import asyncio
    import time

    from circuits.service import middleware
    from circuits.service.middleware import BodyLimit

    monkeypatch.setattr(middleware, "BODY_TIMEOUT_S", 0.5)  # the server's is 5 s
    sent = []

    async def never_called(scope, receive, send):  # pragma: no cover - the middleware answers first
        raise AssertionError("the app saw a partial body")

    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", b"100")]}
    start = time.monotonic()
    asyncio.run(BodyLimit(never_called, limit=1000)(scope, receive, send))
    assert sent[0]["status"] == 408 and time.monotonic() - start < 0.5 + 2


def test_bad_json_and_big_bodies(client):
    one_line_422(client.post("/api/jobs", content=b"{nope", headers={"content-type": "application/json"}), "body")
    big = {**DISCOVER, "options": {"neurons": "m1," * 40_000}}
    assert client.post("/api/jobs", json=big).status_code == 413
    chunks = (b"x" * 40_000 for _ in range(3))  # no Content-Length: counted as it streams in
    assert client.post("/api/jobs", content=chunks, headers={"content-type": "application/json"}).status_code == 413


def test_task_files_are_refused(client):
    detail = one_line_422(client.post("/api/jobs", json={**DISCOVER, "options": {"task_file": "evil.py"}}), "options.task_file")
    assert "task files are code" in detail
    assert client.get("/api/jobs").json() == []


def test_models_are_hub_builtin_or_under_models_dir(tmp_path):
    models = tmp_path / "models"
    (models / "tiny").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (models / "escape").symlink_to(tmp_path / "outside")
    config = ServiceConfig(store=tmp_path / "store", workers=0, models_dir=models, allow_downloads=True)
    with TestClient(create_app(config)) as c:
        for ok in ("planted", "planted-deep", "gpt2", "HuggingFaceTB/SmolLM2-135M"):
            assert c.post("/api/jobs", json={**DISCOVER, "model": ok}).status_code == 201, ok
        job = c.post("/api/jobs", json={**DISCOVER, "model": "tiny"}).json()
        assert c.get(f"/api/jobs/{job['id']}").json()["params"]["values"]["model"] == str((models / "tiny").resolve())
        for bad in ("/etc", "../outside", "./nothing", "~/x", "model.gguf", "escape/../../outside", ""):
            one_line_422(c.post("/api/jobs", json={**DISCOVER, "model": bad}), "model")
        # a link out of --models-dir is not a path under it: the name is then only a hub name
        job = c.post("/api/jobs", json={**DISCOVER, "model": "escape"}).json()
        assert c.get(f"/api/jobs/{job['id']}").json()["params"]["values"]["model"] == "escape"


def test_bearer_token(tmp_path):
    with TestClient(create_app(ServiceConfig(store=tmp_path / "store", workers=0, token="s3cret"))) as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/api/jobs", json=DISCOVER).status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/openapi.json").status_code == 200  # the API's description is public


def test_exposed_host_needs_a_token(monkeypatch):
    monkeypatch.delenv("CIRCUITS_TOKEN", raising=False)
    code, _, err = invoke("serve", "--host", "0.0.0.0", "--port", "1")
    assert_user_error(code, err, "--host 0.0.0.0")
    assert "--token" in err


def test_run_files_and_compare(client, tmp_path):
    store = Store(tmp_path / "store")
    run_id = fake_run(store)
    listed = client.get("/api/runs").json()
    assert [r["id"] for r in listed] == [run_id] and listed[0]["edges"] == 5 and listed[0]["model"] == "planted"
    run = client.get(f"/api/runs/{run_id}").json()
    assert run["files"] == ["circuit.json", "manifest.json", "scores.tsv"] and run["manifest"]["faithfulness"] == 0.5
    r = client.get(f"/api/runs/{run_id}/files/circuit.json")
    assert r.status_code == 200 and r.content == reference_path("planted").read_bytes()
    (store.runs_dir / run_id / "link.json").symlink_to(reference_path("planted"))
    for name in ("../../etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                 "nope.json", "link.json", ".", ""):
        assert client.get(f"/api/runs/{run_id}/files/{name}").status_code == 404, name
    assert client.get("/api/runs/nope/files/circuit.json").status_code == 404
    cmp = client.get(f"/api/compare?a={run_id}&b=planted").json()
    assert cmp["edges"]["jaccard"] == 1.0 and cmp["nodes"]["precision"] == 1.0
    assert client.get(f"/api/compare?a={run_id}&b=nothing").status_code == 404
    job = client.post("/api/jobs", json={"kind": "evaluate-circuit", "circuit": run_id}).json()
    values = client.get(f"/api/jobs/{job['id']}").json()["params"]["values"]
    assert values == {"circuit": str(store.runs_dir / run_id)}  # only what was given: the job fills its defaults


def test_recover_after_a_dead_server(tmp_path):
    store = Store.create(tmp_path / "store")
    done_id = fake_run(store)
    left = store.add_job("evaluate", {"command": ["evaluate"], "args": [], "options": {}})
    store.claim_next()
    (store.tmp_dir / left.id).mkdir()
    (store.tmp_dir / left.id / "half.json").write_text("{", encoding="utf-8")
    renamed = store.add_job("discover", {"command": ["discover"], "args": [], "options": {}})
    store.claim_next()  # died after renaming its complete folder, before the database said so
    shutil.copytree(store.runs_dir / done_id, store.runs_dir / renamed.id)
    outcome = store.recover()
    assert outcome == {"done": [renamed.id], "failed": [left.id], "queued": []}
    assert store.get_job(left.id).state == "failed" and store.get_job(left.id).error == INTERRUPTED
    assert store.get_job(renamed.id).run_id == renamed.id and store.get_run(renamed.id) is not None
    assert list(store.tmp_dir.iterdir()) == [] and store.integrity() == "ok"
    again = store.add_job("evaluate", {"command": ["evaluate"], "args": [], "options": {}})
    store.claim_next()
    assert store.recover(requeue=True)["queued"] == [again.id]
    job = store.get_job(again.id)
    assert job.state == "queued" and job.attempts == 1 and job.started is None
    assert store.claim_next().attempts == 2


def test_runs_commands_read_the_store(tmp_path):
    root = tmp_path / "store"
    code, _, err = invoke("runs", "list", "--store", str(root))
    assert_user_error(code, err, "no store")
    run_id = fake_run(Store.create(root), faithfulness=0.75)
    code, out, err = invoke("runs", "list", "--store", str(root))
    assert code == 0 and run_id in out and "0.750" in out and "5/110" in out, err
    code, out, _ = invoke("runs", "list", "--store", str(root), "--json")
    assert [r["id"] for r in json.loads(out)] == [run_id]
    code, out, _ = invoke("runs", "show", run_id, "--store", str(root))
    assert code == 0 and "faithfulness 0.750" in out and str(root / "runs" / run_id) in out
    code, out, _ = invoke("runs", "show", run_id, "--store", str(root), "--json")
    assert json.loads(out)["edges_total"] == 110
    code, _, err = invoke("runs", "show", "nope", "--store", str(root))
    assert_user_error(code, err, "no run 'nope'")


def test_second_server_on_a_store_is_refused(tmp_path):
    from circuits.errors import CircuitsError
    from circuits.service.store import ServerLock

    lock = ServerLock(tmp_path).acquire()
    try:
        with pytest.raises(CircuitsError, match="another `circuits serve`"):
            ServerLock(tmp_path).check()
    finally:
        lock.release()
    ServerLock(tmp_path).check()
