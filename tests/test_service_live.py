"""``circuits serve`` with real workers: planted jobs over HTTP, ten at once, cancel, kill -9 and restart, Ray.

Only 127.0.0.1; every wait is a loop bounded in count and time.  Worker processes run torch with
one thread (OMP_NUM_THREADS=1), like the in-process CLI run they are compared with.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service needs fastapi (installed by `make install`)")

from fastapi.testclient import TestClient  # noqa: E402

from circuits.service.app import ServiceConfig, create_app  # noqa: E402
from circuits.service.store import Store  # noqa: E402

pytestmark = pytest.mark.slow

FINAL = ("done", "failed", "cancelled")
DISCOVER = {"kind": "discover", "task": "greater-than", "model": "planted", "method": "eap-ig",
            "options": {"n": 12, "seed": 3}}
LONG = {"kind": "discover", "task": "greater-than", "model": "planted", "method": "eap-ig",
        "options": {"n": 400, "ig_steps": 60, "batch_size": 20}}  # minutes: long enough to stop it midway
MEDIUM = {**DISCOVER, "options": {"n": 24, "ig_steps": 10, "seed": 3}}  # seconds, but not over before the kill


def wait_for(get, done, *, timeout: float, every: float = 0.2):
    """Call ``get()`` until ``done(value)``, at most ``timeout`` seconds; the last value."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / every) + 1):
        value = get()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)
    return value


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def one_thread_env():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("MKL_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def service(tmp_path_factory, one_thread_env):
    root = tmp_path_factory.mktemp("service") / "store"
    with TestClient(create_app(ServiceConfig(store=root, workers=2))) as client:
        yield client, Store(root)


def job_of(client, job_id):
    return client.get(f"/api/jobs/{job_id}").json()


def test_planted_discover_over_http_matches_the_cli(service, tmp_path):
    import torch

    from cli_helpers import invoke

    client, store = service
    job_id = client.post("/api/jobs", json=DISCOVER).json()["id"]
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
            if len(events) > 10_000:
                break
    job = job_of(client, job_id)
    assert job["state"] == "done", job
    assert events[-1]["state"] == "done" and any(e["progress"] for e in events)
    assert job["run_id"] == job_id and job["progress"]["done"] == job["progress"]["total"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code, _, err = invoke("discover", "greater-than", "--model", "planted", "--method", "eap-ig", "--n", "12",
                              "--seed", "3", "--out", str(tmp_path / "cli"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    for name in ("circuit.json", "scores.tsv"):
        served = client.get(f"/api/runs/{job_id}/files/{name}")
        assert served.status_code == 200
        assert served.content == (tmp_path / "cli" / name).read_bytes(), name
    # the same job again: the same worker (the first free one) reuses its model, and the files do not change
    again = client.post("/api/jobs", json=DISCOVER).json()["id"]
    second = wait_for(lambda: job_of(client, again), lambda j: j["state"] in FINAL, timeout=240)
    assert second["state"] == "done", second
    assert second["worker"]["pid"] == job["worker"]["pid"] and second["worker"]["loaded_models"] == []
    assert job["worker"]["loaded_models"] == ["planted"]
    for name in ("circuit.json", "scores.tsv"):
        assert client.get(f"/api/runs/{again}/files/{name}").content == (tmp_path / "cli" / name).read_bytes(), name
    page = client.get(f"/api/runs/{job_id}/files/circuit.html")  # the viewer, served as one of the run's files
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    manifest = client.get(f"/api/runs/{job_id}").json()["manifest"]
    command = manifest["command"]  # the command line that runs the same job, with the run's final folder
    assert command[:3] == ["circuits", "discover", "greater-than"]
    assert command[command.index("--out") + 1] == str(store.runs_dir / job_id)
    assert {r["id"] for r in client.get("/api/runs").json()} == {job_id, again}
    assert not any(store.tmp_dir.glob(f"{job_id}*"))


def test_evaluate_circuit_and_analyze_jobs(service):
    client, store = service
    runs = client.get("/api/runs").json()
    if not runs:  # run alone (-k): make the run the first test makes
        made = client.post("/api/jobs", json=DISCOVER).json()["id"]
        wait_for(lambda: job_of(client, made), lambda j: j["state"] in FINAL, timeout=240)
        runs = client.get("/api/runs").json()
    run = runs[-1]  # the oldest
    body = {"kind": "evaluate-circuit", "circuit": run["id"]}
    evaluated = client.post("/api/jobs", json=body).json()["id"]
    analysed = client.post("/api/jobs", json={"kind": "analyze", "task": "greater-than", "model": "planted", "circuit": "planted",
                                              "options": {"n": 8, "candidates": 4, "top_k": 3}}).json()["id"]
    jobs = wait_for(lambda: [job_of(client, i) for i in (evaluated, analysed)],
                    lambda js: all(j["state"] in FINAL for j in js), timeout=240, every=0.5)
    assert [j["state"] for j in jobs] == ["done", "done"], [j["error"] for j in jobs]
    assert jobs[0]["result"]["faithfulness"] == run["faithfulness"]  # the run's circuit, re-evaluated exactly
    assert "report.html" in client.get(f"/api/jobs/{analysed}/files").json()
    page = client.get(f"/api/jobs/{analysed}/files/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert str(store.outputs_dir / analysed) in client.get(f"/api/jobs/{analysed}?log=true").json()["log"]
    assert client.get(f"/api/jobs/{analysed}/files/../summary.json").status_code == 404
    # a model that is nowhere is refused at submission, before any worker tries to download it
    refused = client.post("/api/jobs", json={"kind": "evaluate", "task": "greater-than", "model": "nobody/no-such-model",
                                             "options": {"n": 4}})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("model:")
    # a user error only the model can reveal fails the job with the CLI's one-line message
    failing = client.post("/api/jobs", json={"kind": "analyze", "task": "greater-than", "model": "planted",
                                             "options": {"n": 4, "neurons": "m9"}}).json()["id"]
    job = wait_for(lambda: job_of(client, failing), lambda j: j["state"] in FINAL, timeout=120)
    assert job["state"] == "failed" and "m9" in job["error"] and "\n" not in job["error"], job
    assert "Traceback" not in (client.get(f"/api/jobs/{failing}?log=true").json()["log"] or "")


def test_ten_jobs_at_once_all_finish_once(service):
    client, _ = service
    ids = [client.post("/api/jobs", json={"kind": "evaluate", "task": "greater-than", "model": "planted",
                                           "options": {"n": 6, "seed": seed}}).json()["id"] for seed in range(10)]
    assert len(set(ids)) == 10
    jobs = wait_for(lambda: [job_of(client, i) for i in ids], lambda js: all(j["state"] in FINAL for j in js), timeout=240)
    assert [j["state"] for j in jobs] == ["done"] * 10, [j["error"] for j in jobs]
    assert [j["attempts"] for j in jobs] == [1] * 10
    assert [j["result"]["seed"] for j in jobs] == list(range(10)) and all(j["result"]["n"] == 6 for j in jobs)
    pids = {j["worker"]["pid"] for j in jobs}
    loads = sum(len(j["worker"]["loaded_models"]) for j in jobs)
    assert len(pids) <= 2 and loads <= len(pids)  # each worker loaded the model at most once: reused after
    listed = {j["id"]: j for j in client.get("/api/jobs?limit=1000").json()}
    assert all(listed[i]["state"] == "done" for i in ids)


def test_delete_cancels_a_queued_and_a_running_job_and_a_crash_fails_one(service):
    client, store = service
    first, second, third = (client.post("/api/jobs", json=LONG).json()["id"] for _ in range(3))
    running = wait_for(lambda: [job_of(client, i) for i in (first, second)],
                       lambda js: all(j["state"] == "running" and j["progress"] for j in js), timeout=120)
    assert all(j["state"] == "running" and j["progress"] for j in running), running
    assert job_of(client, third)["state"] == "queued"  # two workers, both busy
    assert client.delete(f"/api/jobs/{third}").json()["state"] == "cancelled"

    pid = running[0]["worker"]["pid"]
    assert alive(pid)
    t = time.monotonic()
    assert client.delete(f"/api/jobs/{first}").json()["state"] == "cancelled"
    wait_for(lambda: alive(pid), lambda a: not a, timeout=10, every=0.1)
    stopped_after = time.monotonic() - t
    assert not alive(pid) and stopped_after < 5.0, stopped_after
    client.delete(f"/api/jobs/{second}")
    for job_id in (first, second, third):
        job = job_of(client, job_id)
        assert job["state"] == "cancelled" and job["run_id"] is None
        assert not (store.runs_dir / job_id).exists()
    assert job_of(client, third)["started"] is None
    wait_for(lambda: list(store.tmp_dir.glob("[0-9a-f]*")), lambda left: not left, timeout=10)
    assert not list(store.tmp_dir.glob("[0-9a-f]*"))

    # a worker that dies in a job (a segfault, the OOM killer) fails that job; the server goes on
    doomed = client.post("/api/jobs", json=LONG).json()["id"]
    job = wait_for(lambda: job_of(client, doomed), lambda j: j["state"] == "running" and j["progress"], timeout=120)
    os.kill(job["worker"]["pid"], signal.SIGKILL)
    job = wait_for(lambda: job_of(client, doomed), lambda j: j["state"] in FINAL, timeout=30)
    assert job["state"] == "failed" and job["error"].startswith("the worker process died"), job
    assert client.get("/api/health").json()["dispatching"] is True
    # the replacement workers take the next job
    job_id = client.post("/api/jobs", json={"kind": "evaluate", "task": "greater-than", "model": "planted",
                                            "options": {"n": 4}}).json()["id"]
    job = wait_for(lambda: job_of(client, job_id), lambda j: j["state"] in FINAL, timeout=120)
    assert job["state"] == "done", job


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``circuits serve`` as a real process (uvicorn) on 127.0.0.1."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        exe = Path(sys.executable).with_name("circuits")
        self.process = subprocess.Popen([str(exe), "serve", "--store", str(root), "--port", str(self.port),
                                         "--workers", "1", *extra], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        health = wait_for(self._health, lambda h: h is not None or self.process.poll() is not None, timeout=90, every=0.3)
        assert health is not None, self.process.stderr.read().decode() if self.process.poll() is not None else "no answer"
        self.health = health

    def request(self, method: str, path: str, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            data = None if body is None else json.dumps(body)
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
            response = conn.getresponse()
            raw = response.read()
            return response.status, raw
        finally:
            conn.close()

    def json(self, method: str, path: str, body=None):
        status, raw = self.request(method, path, body)
        return json.loads(raw)

    def _health(self):
        try:
            status, raw = self.request("GET", "/api/health")
            return json.loads(raw) if status == 200 else None
        except OSError:
            return None

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.process.stderr.close()


def test_kill_9_then_restart_fails_or_requeues(tmp_path):
    root = tmp_path / "store"
    server = Server(root)
    try:
        killed = server.json("POST", "/api/jobs", LONG)["id"]
        job = wait_for(lambda: server.json("GET", f"/api/jobs/{killed}"), lambda j: j["progress"] or j["state"] in FINAL,
                       timeout=120)
        assert job["state"] == "running", job
        worker = job["worker"]["pid"]
        server.kill9()
    finally:
        server.stop()
    wait_for(lambda: alive(worker), lambda a: not a, timeout=10, every=0.1)
    assert not alive(worker)  # the worker died with its server

    server = Server(root)
    try:
        assert server.health["recovered"]["failed"] == [killed]
        job = server.json("GET", f"/api/jobs/{killed}")
        assert job["state"] == "failed" and job["error"] == "interrupted"
        assert not (root / "runs" / killed).exists() and list((root / "tmp").glob("[0-9a-f]*")) == []
        assert Store(root).integrity() == "ok"
        requeued = server.json("POST", "/api/jobs", MEDIUM)["id"]
        job = wait_for(lambda: server.json("GET", f"/api/jobs/{requeued}"), lambda j: j["progress"] or j["state"] in FINAL,
                       timeout=120)
        assert job["state"] == "running", job
        server.kill9()
    finally:
        server.stop()

    server = Server(root, "--requeue")
    try:
        assert server.health["recovered"]["queued"] == [requeued]
        job = wait_for(lambda: server.json("GET", f"/api/jobs/{requeued}"), lambda j: j["state"] in FINAL, timeout=300)
        assert job["state"] == "done" and job["attempts"] == 2, job
        assert (root / "runs" / requeued / "manifest.json").is_file()
        assert Store(root).integrity() == "ok"
        status, raw = server.request("GET", f"/api/runs/{requeued}/files/circuit.json")
        assert status == 200 and raw == (root / "runs" / requeued / "circuit.json").read_bytes()
        for path in (f"/api/runs/{requeued}/files/../../etc/passwd", f"/api/runs/{requeued}/files/..%2F..%2Fetc%2Fpasswd",
                     f"/api/runs/{requeued}/files/unknown.json", "/api/runs/../../etc/passwd"):
            assert server.request("GET", path)[0] == 404, path
        code = subprocess.run([str(Path(sys.executable).with_name("circuits")), "runs", "list", "--store", str(root),
                               "--json"], capture_output=True, text=True, timeout=60)
        assert [r["id"] for r in json.loads(code.stdout)] == [requeued]
    finally:
        server.stop()


def test_ray_executor_runs_a_planted_job(tmp_path, one_thread_env):
    pytest.importorskip("ray", reason="the Ray executor test needs the ray extra (installed by `make install`)")
    import ray

    config = ServiceConfig(store=tmp_path / "store", workers=1, executor="ray",
                           ray_init={"num_cpus": 1, "include_dashboard": False})
    try:
        with TestClient(create_app(config)) as client:
            body = {**DISCOVER, "method": "eap", "options": {"n": 8, "top_k": 5}}
            job_id = client.post("/api/jobs", json=body).json()["id"]
            job = wait_for(lambda: job_of(client, job_id), lambda j: j["state"] in FINAL, timeout=240, every=0.5)
            assert job["state"] == "done", job
            files = client.get(f"/api/runs/{job_id}").json()["files"]
            assert {"circuit.json", "scores.tsv", "manifest.json"} <= set(files)
            cmp = client.get(f"/api/compare?a={job_id}&b=planted").json()
            assert cmp["edges"]["recall"] == 1.0
    finally:
        if ray.is_initialized():
            ray.shutdown()
