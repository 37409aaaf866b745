"""What the service offers: health, tasks, methods, reference circuits and the job kinds' options."""
from __future__ import annotations

from typing import Any, Dict, List

from fastapi import APIRouter, Request

from circuits.service import jobs as jobs_mod
from circuits.service.state import config_of, state_of, store_of

router = APIRouter()


@router.get("/api/health", summary="Service status")
def health(request: Request) -> Dict[str, Any]:
    from circuits import __version__

    state, config, store = state_of(request), config_of(request), store_of(request)
    dispatcher = state["dispatcher"]
    return {"status": "ok", "version": __version__, "executor": config.executor, "workers": config.workers,
            "dispatching": bool(dispatcher and dispatcher.alive()), "queued": store.count_jobs("queued"),
            "running": store.count_jobs("running"), "store": str(store.root), "recovered": state["recovered"]}


@router.get("/api/tasks", summary="Installed tasks")
def tasks() -> List[Dict[str, str]]:
    from circuits.registry import TASKS, plugins

    return [{"name": name, "description": str(getattr(task, "description", ""))} for name, task in plugins(TASKS).items()]


@router.get("/api/methods", summary="Installed scoring methods, with their own options")
def methods() -> List[Dict[str, Any]]:
    from circuits.registry import METHODS, plugins

    return [{"name": name, **{k: str(getattr(m, k)) for k in ("description", "granularity", "cost") if hasattr(m, k)},
             "options": [o.describe() for o in getattr(m, "options", ()) or ()]}
            for name, m in plugins(METHODS).items()]


@router.get("/api/references", summary="Reference circuits shipped with the package")
def references() -> List[Dict[str, str]]:
    from circuits.graphs.reference_circuits import reference_description, reference_names

    return [{"name": name, "description": reference_description(name)} for name in reference_names()]


@router.get("/api/kinds", summary="Job kinds and the options each takes, from the jobs' own declarations")
def kinds() -> Dict[str, Any]:
    return jobs_mod.kinds()
