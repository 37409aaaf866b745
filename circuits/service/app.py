"""The HTTP API of ``circuits serve`` (FastAPI; OpenAPI at ``/docs``).

``create_app(config)`` builds the application; its lifespan opens the store, recovers jobs a
dead server left running, and starts the dispatcher with the configured executor.  The routes are
in ``routes_info`` (health, catalogue, job kinds), ``routes_jobs`` and ``routes_runs``; the
middleware (body limits, bearer token) in ``middleware``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from circuits.errors import CircuitsError
from circuits.service.jobs import DEFAULT_MAX_N, RequestError, kinds
from circuits.service.middleware import Bearer, BodyLimit
from circuits.service.store import ServerLock, Store

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 64 * 1024


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
    max_n: int = DEFAULT_MAX_N
    allow_downloads: bool = False


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


def _handlers(app) -> None:
    """Errors as one-line JSON: 422 naming the field for a bad request, 400 for another user error."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            return JSONResponse(status_code=422, content={"detail": f"body: not valid JSON ({first.get('msg', '')})"})
        loc = [str(p) for p in first.get("loc", ()) if p != "body"] or ["body"]
        message = f"{'.'.join(loc)}: {first.get('msg', 'invalid')}".replace("\n", " ")
        return JSONResponse(status_code=422, content={"detail": message})

    @app.exception_handler(RequestError)
    async def _refused(request, exc: RequestError):
        return JSONResponse(status_code=422, content={"detail": str(exc).replace("\n", " ")})

    @app.exception_handler(CircuitsError)
    async def _user_error(request, exc: CircuitsError):
        return JSONResponse(status_code=400, content={"detail": str(exc).replace("\n", " ")})


def create_app(config: ServiceConfig):
    """The FastAPI application of ``config``: the store, the dispatcher (in its lifespan) and the routes."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    from circuits import __version__
    from circuits.service import routes_info, routes_jobs, routes_runs

    state: Dict[str, Any] = {"store": Store.create(config.store), "dispatcher": None, "recovered": None}

    @asynccontextmanager
    async def lifespan(app):
        store = state["store"]
        lock = ServerLock(store.root).acquire()
        state["recovered"] = store.recover(requeue=config.requeue)
        kinds()  # load the jobs and the method plugins now, so the first request is checked quickly
        if config.workers > 0:
            from circuits.service.dispatcher import Dispatcher

            state["dispatcher"] = Dispatcher(store, make_executor(config))
            state["dispatcher"].start()
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
    _handlers(app)
    for module in (routes_info, routes_jobs, routes_runs):
        app.include_router(module.router)
    app.state.service = state
    app.state.config = config
    app.add_middleware(BodyLimit, limit=config.max_body)
    if config.token:
        app.add_middleware(Bearer, token=config.token)  # outermost: no body is read without the token
    return app
