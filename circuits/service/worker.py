"""The code that runs inside a worker: a local worker process's loop, and the task a Ray worker runs.

A local worker is a process started with ``spawn``; it receives ``("run", job_id, spec, out,
shown_out)`` on its pipe, runs the job in-process (:func:`circuits.service.runner.job_outcome`),
sends ``("progress", job_id, done, total, message)`` while it runs and ``("done", job_id,
outcome)`` at the end.  It dies with the server: it asks Linux for SIGKILL when its parent
dies, and a watchdog thread checks the parent as well.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Optional, Tuple

PROGRESS_EVERY_S = 0.2


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # not fatal: the watchdog below covers it
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, name="circuits-worker-watchdog", daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def worker_main(conn, cwd: str, parent: int) -> None:
    """A local worker's loop (the target of a spawned process)."""
    _die_with_parent(parent)
    os.makedirs(cwd, exist_ok=True)
    os.chdir(cwd)  # an empty folder: a model name never resolves to a file of the server's folder
    from circuits.jobs import jobs
    from circuits.service.runner import job_outcome

    jobs()  # import the jobs now, not in the first job
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] != "run":
            return
        _, job_id, spec, out, shown = message
        last = [0.0]

        def progress(done: int, total: int, text: str) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S or done >= total:
                last[0] = now
                conn.send(("progress", job_id, int(done), int(total), str(text)))

        outcome = job_outcome(spec, out, progress, shown)
        try:
            conn.send(("done", job_id, outcome))
        except (BrokenPipeError, OSError):
            return


def ray_job(spec: Dict[str, Any], shown_out: Optional[str]) -> Tuple[Any, Dict[str, bytes]]:
    """A job run by a Ray worker: (outcome, the files of its folder as bytes).

    The folder is written into a temporary folder on the Ray node and sent back, so the server
    can publish it into its store atomically whatever node ran the job."""
    from circuits.service.jobs import WRITES_FOLDER
    from circuits.service.runner import job_outcome

    work = tempfile.mkdtemp(prefix="circuits-ray-job-")
    try:
        out = os.path.join(work, "out") if spec.get("kind") in WRITES_FOLDER else None
        if out is not None:
            os.makedirs(out)
        cwd = os.getcwd()
        os.chdir(work)
        try:
            outcome = job_outcome(spec, out, None, shown_out)
        finally:
            os.chdir(cwd)
        files: Dict[str, bytes] = {}
        if out is not None and outcome.ok:
            for name in sorted(os.listdir(out)):
                path = os.path.join(out, name)
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as fh:
                        files[name] = fh.read()
        return outcome, files
    finally:
        shutil.rmtree(work, ignore_errors=True)
