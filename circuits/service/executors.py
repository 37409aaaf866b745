"""Where jobs run.  An executor takes jobs while it has free slots and reports events.

The interface (used only by :class:`circuits.service.dispatcher.Dispatcher`, from one thread):

- ``start()`` / ``close()``;
- ``free()``: how many more jobs it takes now;
- ``submit(job_id, spec, out, shown_out)``: run a job; ``out`` is the empty folder to write into
  (None for jobs that write no folder) and ``shown_out`` the folder it will be renamed to;
- ``poll(timeout)``: the events since the last poll: ``("progress", id, done, total, message)``,
  ``("done", id, outcome)`` or ``("crashed", id, message)``;
- ``cancel(job_id)``: stop a running job at once;
- ``pid_of(job_id)``: the local process running a job (None when unknown).

``local`` runs jobs in worker processes of this machine; ``ray`` sends them to a Ray cluster.
"""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from circuits.errors import CircuitsError

EXECUTORS = ("local", "ray")
STOP_WAIT_S = 3.0


@dataclass
class _Slot:
    process: Any = None
    conn: Any = None
    job_id: Optional[str] = None


class LocalExecutor:
    """``workers`` processes started with ``spawn``; each runs one job at a time and keeps its last model."""

    name = "local"

    def __init__(self, workers: int, *, cwd: Path) -> None:
        if workers < 1:
            raise CircuitsError(f"--workers must be at least 1 (got {workers})")
        self.cwd = str(cwd)
        self.slots = [_Slot() for _ in range(workers)]
        self.context = multiprocessing.get_context("spawn")

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        from circuits.service.worker import worker_main

        ours, theirs = self.context.Pipe(duplex=True)
        process = self.context.Process(target=worker_main, args=(theirs, self.cwd, os.getpid()),
                                       name="circuits-worker", daemon=True)
        process.start()
        theirs.close()
        slot.process, slot.conn, slot.job_id = process, ours, None

    def free(self) -> int:
        return sum(1 for s in self.slots if s.job_id is None and s.process is not None)

    def submit(self, job_id: str, spec: Dict[str, Any], out: Optional[str], shown_out: Optional[str]) -> None:
        slot = next(s for s in self.slots if s.job_id is None and s.process is not None)
        slot.conn.send(("run", job_id, spec, out, shown_out))
        slot.job_id = job_id

    def poll(self, timeout: float) -> List[Tuple]:
        waitables = {}
        for slot in self.slots:
            if slot.process is None:
                continue
            waitables[slot.conn] = slot
            waitables[slot.process.sentinel] = slot
        events: List[Tuple] = []
        ready = wait(list(waitables), timeout=timeout) if waitables else []
        for item in ready:
            slot = waitables[item]
            if item is slot.conn:
                try:
                    while slot.conn.poll():
                        message = slot.conn.recv()
                        events.append(message)
                        if message[0] == "done" and message[1] == slot.job_id:
                            slot.job_id = None
                except (EOFError, OSError):
                    pass
        for slot in self.slots:  # a worker that died (a crash in a job, or killed from outside)
            if slot.process is not None and not slot.process.is_alive():
                code = slot.process.exitcode
                if slot.job_id is not None:
                    events.append(("crashed", slot.job_id, f"the worker process died (exit code {code})"))
                self._reap(slot)
                self._spawn(slot)
        return events

    def _reap(self, slot: _Slot) -> None:
        try:
            slot.conn.close()
        except OSError:
            pass
        slot.process.join(timeout=0.1)
        slot.process, slot.conn, slot.job_id = None, None, None

    def _stop(self, slot: _Slot) -> None:
        process = slot.process
        process.terminate()
        process.join(STOP_WAIT_S)
        if process.is_alive():
            process.kill()
            process.join(STOP_WAIT_S)
        self._reap(slot)

    def cancel(self, job_id: str) -> bool:
        for slot in self.slots:
            if slot.job_id == job_id and slot.process is not None:
                self._stop(slot)
                self._spawn(slot)
                return True
        return False

    def pid_of(self, job_id: str) -> Optional[int]:
        for slot in self.slots:
            if slot.job_id == job_id and slot.process is not None:
                return slot.process.pid
        return None

    def worker_pids(self) -> List[Optional[int]]:
        return [s.process.pid if s.process is not None else None for s in self.slots]

    def close(self) -> None:
        for slot in self.slots:
            if slot.process is not None:
                try:
                    slot.conn.send(("stop",))
                except (OSError, BrokenPipeError):
                    pass
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(0.5)
                if slot.process.is_alive():
                    self._stop(slot)
                else:
                    self._reap(slot)


class RayExecutor:
    """Jobs as Ray tasks (``circuits.service.worker.ray_job``): one CPU each, or one GPU with ``--device cuda``.

    ``slots`` bounds the jobs sent at once; the cluster queues them further if it is busy."""

    name = "ray"

    def __init__(self, slots: int, *, address: Optional[str] = None, init_options: Optional[Dict[str, Any]] = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise CircuitsError("the ray executor needs Ray: pip install 'circuits[ray]'") from None
        if slots < 1:
            raise CircuitsError(f"--workers must be at least 1 (got {slots})")
        self.slots = slots
        self.address = address
        self.init_options = dict(init_options or {})
        self.started_ray = False
        self.inflight: Dict[Any, Tuple[str, Optional[str]]] = {}  # ref -> (job id, out folder)
        self.remote = None

    def start(self) -> None:
        import ray

        from circuits.service.worker import ray_job

        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False, **self.init_options}
            try:
                ray.init(address=self.address, **options)
            except Exception as exc:  # no cluster at the address, bad options
                where = self.address or "a new local instance"
                raise CircuitsError(f"cannot start Ray ({where}): {str(exc).splitlines()[0][:200]}; "
                                    "check --ray-address") from None
            self.started_ray = True
        self.remote = ray.remote(max_retries=0)(ray_job)

    def free(self) -> int:
        return self.slots - len(self.inflight)

    def submit(self, job_id: str, spec: Dict[str, Any], out: Optional[str], shown_out: Optional[str]) -> None:
        device = str((spec.get("options") or {}).get("device") or "cpu")
        resources = {"num_gpus": 1, "num_cpus": 1} if device.startswith("cuda") else {"num_cpus": 1}
        ref = self.remote.options(**resources).remote(spec, shown_out)
        self.inflight[ref] = (job_id, out)

    def poll(self, timeout: float) -> List[Tuple]:
        import ray

        if not self.inflight:
            import time

            time.sleep(timeout)
            return []
        ready, _ = ray.wait(list(self.inflight), num_returns=len(self.inflight), timeout=timeout)
        events: List[Tuple] = []
        for ref in ready:
            job_id, out = self.inflight.pop(ref)
            try:
                outcome, files = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                continue
            except Exception as exc:  # the task or its worker failed
                events.append(("crashed", job_id, f"the Ray task failed: {str(exc).splitlines()[0][:300]}"))
                continue
            if out is not None:
                for name, data in files.items():
                    (Path(out) / name).write_bytes(data)
            events.append(("done", job_id, outcome))
        return events

    def pid_of(self, job_id: str) -> Optional[int]:
        return None  # a Ray worker's process is the cluster's business

    def cancel(self, job_id: str) -> bool:
        import ray

        for ref, (jid, _) in list(self.inflight.items()):
            if jid == job_id:
                ray.cancel(ref, force=True)
                del self.inflight[ref]
                return True
        return False

    def close(self) -> None:
        import ray

        for ref in list(self.inflight):
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        self.inflight.clear()
        if self.started_ray:
            ray.shutdown()
