"""Jobs: submit (checked at once against the job's declarations), list, follow, cancel, read files."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from circuits.service import jobs as jobs_mod
from circuits.service.state import config_of, not_found, short, store_of
from circuits.service.store import FINAL_STATES, STATES, folder_files, safe_file

SSE_TURN_S = 0.25
SSE_KEEPALIVE_S = 15.0
MEDIA_TYPES = {".json": "application/json", ".tsv": "text/tab-separated-values; charset=utf-8",
               ".dot": "text/vnd.graphviz; charset=utf-8", ".svg": "image/svg+xml", ".md": "text/markdown; charset=utf-8",
               ".png": "image/png", ".html": "text/html; charset=utf-8", ".csv": "text/csv; charset=utf-8",
               ".txt": "text/plain; charset=utf-8"}

router = APIRouter()


class JobRequest(BaseModel):
    """A job: ``kind`` with its task, model, method and options (the CLI's names, ``-`` -> ``_``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {
        "kind": "discover", "task": "greater-than", "model": "planted", "method": "eap-ig",
        "options": {"n": 100, "seed": 0}}})
    kind: str = Field(description="discover, evaluate, evaluate-circuit or analyze")
    task: Optional[str] = Field(None, description="An installed task (GET /api/tasks)")
    model: Optional[str] = Field(None, description="A hub name, a built-in name (planted) or a path under --models-dir")
    method: Optional[str] = Field(None, description="discover: a scoring method (GET /api/methods)")
    circuit: Optional[str] = Field(None, description="evaluate-circuit, analyze: a run ID or a reference name")
    options: Dict[str, Any] = Field(default_factory=dict, description="The job's other options (GET /api/kinds)")


def file_response(folder: Optional[Path], name: str, what: str):
    path = safe_file(folder, name) if folder is not None else None
    if path is None:
        raise HTTPException(404, f"{what} has no file {short(name)!r}")
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"))


def _job(request: Request, job_id: str):
    job = store_of(request).get_job(job_id)
    if job is None:
        raise not_found("job", job_id)
    return job


@router.post("/api/jobs", status_code=201, summary="Queue a job (its options are checked now)")
def submit(request: Request, body: JobRequest) -> Dict[str, str]:
    config = config_of(request)
    limits = jobs_mod.Limits(models_dir=config.models_dir, default_device=config.device, max_n=config.max_n,
                             allow_downloads=config.allow_downloads)
    plan = jobs_mod.build_job(body.model_dump(), store=store_of(request), limits=limits)
    job = store_of(request).add_job(plan.kind, plan.params())
    return {"id": job.id, "state": job.state}


@router.get("/api/jobs", summary="Jobs, newest first")
def list_jobs(request: Request, state_: Optional[str] = Query(None, alias="state"),
              limit: int = Query(100, ge=1, le=10_000)) -> List[Dict[str, Any]]:
    if state_ is not None and state_ not in STATES:
        raise HTTPException(422, f"state: must be one of {', '.join(STATES)}")
    return [j.public() for j in store_of(request).list_jobs(state_, limit=limit)]


@router.get("/api/jobs/{job_id}", summary="A job: state, progress, error, run_id")
def get_job(request: Request, job_id: str, log: bool = False) -> Dict[str, Any]:
    return _job(request, job_id).public(log=log)


@router.delete("/api/jobs/{job_id}", summary="Cancel a queued or running job")
def cancel(request: Request, job_id: str) -> Dict[str, str]:
    was = store_of(request).cancel(job_id)
    if was is None:
        raise not_found("job", job_id)
    if was in FINAL_STATES:
        raise HTTPException(409, f"job {job_id} is already {was}")
    return {"id": job_id, "state": "cancelled"}


@router.get("/api/jobs/{job_id}/events", summary="The job's state and progress as server-sent events")
async def events(request: Request, job_id: str):
    _job(request, job_id)
    store = store_of(request)

    async def stream():
        last, quiet = None, 0.0
        while True:
            job = store.get_job(job_id)
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


@router.get("/api/jobs/{job_id}/files/{name:path}", summary="A file written by a finished analyze job")
def job_file(request: Request, job_id: str, name: str):
    _job(request, job_id)
    return file_response(store_of(request).output_folder(job_id), name, f"job {job_id}")


@router.get("/api/jobs/{job_id}/files", summary="The files written by a finished analyze job")
def job_files(request: Request, job_id: str) -> List[str]:
    _job(request, job_id)
    folder = store_of(request).output_folder(job_id)
    return folder_files(folder) if folder is not None else []
