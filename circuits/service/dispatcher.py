"""The server's dispatcher: one thread that feeds queued jobs to the executor and records what happens.

Each turn it (1) stops running jobs that were cancelled, (2) claims queued jobs while the
executor has free slots, and (3) records the executor's events: progress, and the end of a
job.  A finished job that wrote a folder is published by :meth:`Store.publish` (rename, then
index and ``done`` in one transaction); a failed job's temporary folder is removed.
"""
from __future__ import annotations

import logging
import threading
from typing import Dict, Optional

from circuits.service.jobs import WRITES_FOLDER
from circuits.service.store import Store

log = logging.getLogger("circuits.service")
TURN_S = 0.2


class Dispatcher:
    def __init__(self, store: Store, executor) -> None:
        self.store = store
        self.executor = executor
        self.inflight: Dict[str, str] = {}  # job id -> kind
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None

    def start(self) -> None:
        self.executor.start()
        self._thread = threading.Thread(target=self._loop, name="circuits-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.executor.close()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.turn()
            except Exception as exc:  # keep dispatching; the error is logged and shown by /api/health
                self.error = exc
                log.exception("dispatcher turn failed")
                self._stop.wait(1.0)

    def turn(self) -> None:
        self._cancelled()
        while self.executor.free() > 0 and not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                break
            self._submit(job)
        for event in self.executor.poll(TURN_S):
            self._record(event)

    def _submit(self, job) -> None:
        spec = {"kind": job.kind, **job.params}
        out = shown = None
        if job.kind in WRITES_FOLDER:
            out = str(self.store.tmp_folder(job.id))
            final = self.store.runs_dir if job.kind == "discover" else self.store.outputs_dir
            shown = str(final / job.id)
        try:
            self.executor.submit(job.id, spec, out, shown)
        except Exception as exc:
            self.store.discard_tmp(job.id)
            self.store.finish(job.id, "failed", error=f"could not start the job: {exc}")
            return
        self.inflight[job.id] = job.kind
        pid = self.executor.pid_of(job.id)
        if pid is not None:
            self.store.set_worker(job.id, {"pid": pid})

    def _cancelled(self) -> None:
        if not self.inflight:
            return
        states = self.store.states(self.inflight)
        for job_id in list(self.inflight):
            if states.get(job_id) != "running":
                self.executor.cancel(job_id)
                self.store.discard_tmp(job_id)
                self.inflight.pop(job_id, None)

    def _record(self, event) -> None:
        kind, job_id = event[0], event[1]
        if kind == "progress":
            self.store.set_progress(job_id, event[2], event[3], event[4])
            return
        job_kind = self.inflight.pop(job_id, None)
        if job_kind is None:  # cancelled meanwhile
            self.store.discard_tmp(job_id)
            return
        if kind == "crashed":
            self.store.discard_tmp(job_id)
            self.store.finish(job_id, "failed", error=event[2])
            return
        try:
            self._settle(job_id, job_kind, event[2])
        except Exception as exc:  # e.g. the store's disk is full: the job fails, the server goes on
            log.exception("could not record the end of job %s", job_id)
            self.store.discard_tmp(job_id)
            self.store.finish(job_id, "failed", error=f"could not store the job's results: {type(exc).__name__}: {exc}")

    def _settle(self, job_id: str, job_kind: str, outcome) -> None:
        worker = outcome.worker()
        if not outcome.ok:
            self.store.discard_tmp(job_id)
            self.store.finish(job_id, "failed", error=outcome.error, log=outcome.log(), worker=worker)
        elif job_kind in WRITES_FOLDER:
            self.store.publish(job_id, job_kind, result=outcome.result, log=outcome.log(), worker=worker)
        else:
            self.store.finish(job_id, "done", result=outcome.result, log=outcome.log(), worker=worker)
