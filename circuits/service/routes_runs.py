"""Runs: the index, one run's manifest and files, and comparing a run with another or a reference."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

from fastapi import APIRouter, HTTPException, Query, Request

from circuits.service.routes_jobs import file_response
from circuits.service.state import not_found, short, store_of
from circuits.service.store import folder_files

router = APIRouter()


def _run_folder(request: Request, run_id: str) -> Path:
    folder = store_of(request).run_folder(run_id)
    if folder is None:
        raise not_found("run", run_id)
    return folder


@router.get("/api/runs", summary="Runs, newest first (task, model, method, faithfulness, edges, created)")
def runs(request: Request, limit: int = Query(1000, ge=1, le=100_000)) -> List[Dict[str, Any]]:
    return [r.public() for r in store_of(request).list_runs(limit)]


@router.get("/api/runs/{run_id}", summary="A run's manifest, index entry and files")
def run(request: Request, run_id: str) -> Dict[str, Any]:
    folder = _run_folder(request, run_id)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    return {**store_of(request).get_run(run_id).public(), "files": folder_files(folder), "manifest": manifest}


@router.get("/api/runs/{run_id}/files/{name:path}", summary="One file of a run (circuit.json, scores.tsv, circuit.svg...)")
def run_file(request: Request, run_id: str, name: str):
    return file_response(_run_folder(request, run_id), name, f"run {run_id}")


@router.get("/api/compare", summary="Precision, recall, Jaccard and AUROC of run A against run or reference B")
def compare(request: Request, a: str, b: str) -> Dict[str, Any]:
    from circuits.graphs.compare import SCORES_FILE, compare as compare_graphs, load_scores
    from circuits.graphs.files import load_circuit
    from circuits.graphs.reference_circuits import reference_names, reference_path

    folder_a = _run_folder(request, a)
    if store_of(request).get_run(b) is not None:
        path_b: Path = _run_folder(request, b)
    elif b in reference_names():
        path_b = reference_path(b)
    else:
        raise HTTPException(404, f"b: {short(b)!r} is neither a run ID nor a reference name")
    scores = load_scores(folder_a) if (folder_a / SCORES_FILE).is_file() else None
    result = compare_graphs(load_circuit(folder_a), load_circuit(path_b), scores=scores)
    return {"a": a, "b": b, **result}
