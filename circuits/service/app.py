"""The HTTP API of ``circuits serve`` (FastAPI; OpenAPI at ``/docs``).

``create_app(config)`` builds the application; its lifespan opens the store, recovers jobs a
dead server left running, and starts the dispatcher with the configured executor.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from pydantic import BaseModel, ConfigDict, Field

from circuits.errors import CircuitsError
from circuits.service import jobs as jobs_mod
from circuits.service.store import FINAL_STATES, STATES, ServerLock, Store, folder_files, safe_file

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 64 * 1024
OPEN_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json")
SSE_TURN_S = 0.25
SSE_KEEPALIVE_S = 15.0
MEDIA_TYPES = {".json": "application/json", ".tsv": "text/tab-separated-values; charset=utf-8",
               ".dot": "text/vnd.graphviz; charset=utf-8", ".svg": "image/svg+xml", ".md": "text/markdown; charset=utf-8",
               ".png": "image/png", ".html": "text/html; charset=utf-8", ".csv": "text/csv; charset=utf-8",
               ".txt": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class ServiceConfig:
    """How the service runs.  ``workers=0`` starts no executor (jobs stay queued; for tests of the API)."""

    store: Path
    host: str = "127.0.0.1"
    port: int = 8765
    workers: int = 1
    executor: str = "local"
    ray_address: Optional[str] = None
    ray_init: Optional[Dict[str, Any]] = None
    token: Optional[str] = None
    models_dir: Optional[Path] = None
    device: Optional[str] = None
    requeue: bool = False
    max_body: int = MAX_BODY_BYTES


def check_exposure(host: str, token: Optional[str]) -> None:
    """Refuse to listen beyond this machine without a token."""
    if host not in LOCAL_HOSTS and not token:
        raise CircuitsError(f"--host {host} exposes the service beyond this machine; pass --token SECRET "
                            "or set CIRCUITS_TOKEN (clients send it as 'Authorization: Bearer SECRET')")


def make_executor(config: ServiceConfig):
    from circuits.service.executors import EXECUTORS, LocalExecutor, RayExecutor

    if config.executor == "local":
        return LocalExecutor(config.workers, cwd=Path(config.store) / "tmp" / ".cwd")
    if config.executor == "ray":
        return RayExecutor(config.workers, address=config.ray_address, init_options=config.ray_init)
    raise CircuitsError(f"--executor must be one of {', '.join(EXECUTORS)} (got {config.executor!r})")


class _BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413 (by its Content-Length, or as it streams in).

    The body is read here, at most ``limit`` bytes, and handed on whole."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body too large (limit {self.limit} bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _plain(send, 413, too_large)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _plain(send, 413, too_large)
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class _Bearer:
    """ASGI middleware: every request but the API docs needs ``Authorization: Bearer TOKEN``."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            return await _plain(send, 401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                                extra=[(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


async def _plain(send, status: int, detail: str, extra=()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


class JobRequest(BaseModel):
    """A job: the CLI command ``kind`` with its task, model, method and options (the CLI's names, ``-`` -> ``_``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "kind": "discover", "task": "greater-than", "model": "planted", "method": "eap-ig",
        "options": {"n": 100, "seed": 0}}})
    kind: str = Field(description="discover, evaluate, evaluate-circuit or analyze")
    task: Optional[str] = Field(None, description="An installed task (GET /api/tasks)")
    model: Optional[str] = Field(None, description="A hub name, a built-in name (planted) or a path under --models-dir")
    method: Optional[str] = Field(None, description="discover: a scoring method (GET /api/methods)")
    circuit: Optional[str] = Field(None, description="evaluate-circuit, analyze: a run ID or a reference name")
    options: Dict[str, Any] = Field(default_factory=dict, description="The command's other options (GET /api/kinds)")


def create_app(config: ServiceConfig):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from circuits import __version__

    state: Dict[str, Any] = {"store": Store.create(config.store), "dispatcher": None, "recovered": None}

    @asynccontextmanager
    async def lifespan(app):
        store = state["store"]
        lock = ServerLock(store.root).acquire()
        state["recovered"] = store.recover(requeue=config.requeue)
        if config.workers > 0:
            from circuits.service.dispatcher import Dispatcher

            dispatcher = Dispatcher(store, make_executor(config))
            dispatcher.start()
            state["dispatcher"] = dispatcher
        try:
            yield
        finally:
            if state["dispatcher"] is not None:
                state["dispatcher"].stop()
                state["dispatcher"] = None
            lock.release()

    app = FastAPI(title="circuits", version=__version__, lifespan=lifespan,
                  description="Circuit discovery as a service: queue `discover`, `evaluate`, `evaluate-circuit` and "
                              "`analyze` jobs with the CLI's options, follow them, and read the runs they leave.")

    def store() -> Store:
        return state["store"]

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return JSONResponse(status_code=422, content={"detail": f"body: not valid JSON ({first.get('msg', '')})"})
        loc = [str(p) for p in first.get("loc", ()) if p != "body"] or ["body"]
        message = f"{'.'.join(loc)}: {first.get('msg', 'invalid')}".replace("\n", " ")
        return JSONResponse(status_code=422, content={"detail": message})

    @app.exception_handler(jobs_mod.RequestError)
    async def _refused(request: Request, exc: jobs_mod.RequestError):
        return JSONResponse(status_code=422, content={"detail": str(exc).replace("\n", " ")})

    @app.exception_handler(CircuitsError)
    async def _user_error(request: Request, exc: CircuitsError):
        return JSONResponse(status_code=400, content={"detail": str(exc).replace("\n", " ")})

    @app.get("/api/health", summary="Service status")
    def health() -> Dict[str, Any]:
        dispatcher = state["dispatcher"]
        queued = len(store().list_jobs("queued", limit=100_000))
        running = len(store().list_jobs("running", limit=100_000))
        return {"status": "ok", "version": __version__, "executor": config.executor, "workers": config.workers,
                "dispatching": bool(dispatcher and dispatcher.alive()), "queued": queued, "running": running,
                "store": str(store().root), "recovered": state["recovered"]}

    @app.get("/api/tasks", summary="Installed tasks")
    def tasks() -> List[Dict[str, str]]:
        from circuits.registry import TASKS, discover

        return [{"name": name, "description": str(getattr(task, "description", ""))} for name, task in discover(TASKS).items()]

    @app.get("/api/methods", summary="Installed scoring methods")
    def methods() -> List[Dict[str, Any]]:
        from circuits.registry import METHODS, discover

        return [{"name": name, **{k: str(getattr(m, k)) for k in ("description", "granularity", "cost") if hasattr(m, k)}}
                for name, m in discover(METHODS).items()]

    @app.get("/api/references", summary="Reference circuits shipped with the package")
    def references() -> List[Dict[str, str]]:
        from circuits.cli.commands_reference import reference_description, reference_names

        return [{"name": name, "description": reference_description(name)} for name in reference_names()]

    @app.get("/api/kinds", summary="Job kinds and the options each takes, with the CLI's defaults")
    def kinds() -> Dict[str, Any]:
        return {kind: {"options": [s.public() for s in jobs_mod.served_options(kind)]} for kind in jobs_mod.KINDS}

    @app.post("/api/jobs", status_code=201, summary="Queue a job")
    def submit(request: JobRequest) -> Dict[str, str]:
        plan = jobs_mod.build_job(request.model_dump(), store=store(), models_dir=config.models_dir,
                                  default_device=config.device)
        job = store().add_job(plan.kind, plan.params())
        return {"id": job.id, "state": job.state}

    @app.get("/api/jobs", summary="Jobs, newest first")
    def list_jobs(state_: Optional[str] = Query(None, alias="state"), limit: int = Query(100, ge=1, le=10_000)) -> List[Dict[str, Any]]:
        if state_ is not None and state_ not in STATES:
            raise HTTPException(422, f"state: must be one of {', '.join(STATES)}")
        return [j.public() for j in store().list_jobs(state_, limit=limit)]

    def _job(job_id: str):
        job = store().get_job(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        return job

    @app.get("/api/jobs/{job_id}", summary="A job: state, progress, error, run_id")
    def get_job(job_id: str, log: bool = False) -> Dict[str, Any]:
        return _job(job_id).public(log=log)

    @app.delete("/api/jobs/{job_id}", summary="Cancel a queued or running job")
    def cancel(job_id: str) -> Dict[str, str]:
        was = store().cancel(job_id)
        if was is None:
            raise HTTPException(404, f"no job {job_id!r}")
        if was in FINAL_STATES:
            raise HTTPException(409, f"job {job_id} is already {was}")
        return {"id": job_id, "state": "cancelled"}

    @app.get("/api/jobs/{job_id}/events", summary="The job's state and progress as server-sent events")
    async def events(job_id: str):
        _job(job_id)

        async def stream():
            last, quiet = None, 0.0
            while True:
                job = store().get_job(job_id)
                snapshot = {"id": job.id, "state": job.state, "progress": job.progress, "error": job.error,
                            "run_id": job.run_id}
                if snapshot != last:
                    last, quiet = snapshot, 0.0
                    yield f"event: {'end' if job.state in FINAL_STATES else 'progress'}\ndata: {json.dumps(snapshot)}\n\n"
                if job.state in FINAL_STATES:
                    return
                await asyncio.sleep(SSE_TURN_S)
                quiet += SSE_TURN_S
                if quiet >= SSE_KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _file(folder: Optional[Path], name: str, what: str):
        path = safe_file(folder, name) if folder is not None else None
        if path is None:
            raise HTTPException(404, f"{what} has no file {name!r}")
        media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media)

    @app.get("/api/jobs/{job_id}/files/{name:path}", summary="A file written by a finished analyze job")
    def job_file(job_id: str, name: str):
        _job(job_id)
        return _file(store().output_folder(job_id), name, f"job {job_id}")

    @app.get("/api/jobs/{job_id}/files", summary="The files written by a finished analyze job")
    def job_files(job_id: str) -> List[str]:
        _job(job_id)
        folder = store().output_folder(job_id)
        return folder_files(folder) if folder is not None else []

    @app.get("/api/runs", summary="Runs, newest first (task, model, method, faithfulness, edges, created)")
    def runs(limit: int = Query(1000, ge=1, le=100_000)) -> List[Dict[str, Any]]:
        return [r.public() for r in store().list_runs(limit)]

    def _run_folder(run_id: str) -> Path:
        folder = store().run_folder(run_id)
        if folder is None:
            raise HTTPException(404, f"no run {run_id!r}")
        return folder

    @app.get("/api/runs/{run_id}", summary="A run's manifest, index entry and files")
    def run(run_id: str) -> Dict[str, Any]:
        folder = _run_folder(run_id)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        return {**store().get_run(run_id).public(), "files": folder_files(folder), "manifest": manifest}

    @app.get("/api/runs/{run_id}/files/{name:path}", summary="One file of a run (circuit.json, scores.tsv, circuit.svg...)")
    def run_file(run_id: str, name: str):
        return _file(_run_folder(run_id), name, f"run {run_id}")

    @app.get("/api/compare", summary="Precision, recall, Jaccard and AUROC of run A against run or reference B")
    def compare(a: str, b: str) -> Dict[str, Any]:
        from circuits.graphs.build import load_circuit
        from circuits.graphs.compare import SCORES_FILE, compare as compare_graphs, load_scores

        folder_a = _run_folder(a)
        if store().get_run(b) is not None:
            path_b: Path = _run_folder(b)
        else:
            from circuits.cli.commands_reference import reference_names

            if b not in reference_names():
                raise HTTPException(404, f"b: {b!r} is neither a run ID nor a reference name")
            path_b = jobs_mod.reference_path(b)
        scores = load_scores(folder_a) if (folder_a / SCORES_FILE).is_file() else None
        result = compare_graphs(load_circuit(folder_a), load_circuit(path_b), scores=scores)
        return {"a": a, "b": b, **result}

    app.state.service = state
    app.state.config = config
    app.add_middleware(_BodyLimit, limit=config.max_body)
    if config.token:
        app.add_middleware(_Bearer, token=config.token)  # outermost: no body is read without the token
    return app
