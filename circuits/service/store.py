"""The service's store: a folder holding an SQLite database (the job queue and the run index) and the run folders.

Layout of ``ROOT``::

    circuits.db      jobs and runs (WAL mode, so readers never wait for the server)
    runs/ID/         one finished ``discover`` job: the run folder exactly as the CLI writes it
    outputs/ID/      one finished ``analyze`` job: its pictures, tables and report.html
    tmp/ID/          a job's folder while it is written; renamed into runs/ or outputs/ when complete

A folder appears under ``runs/`` only by an atomic rename of a complete folder, so a run folder is
never half-written; ``tmp/`` is emptied when the server starts.  Only the server writes jobs; the
``circuits runs`` commands read the same database without it.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from circuits.errors import CircuitsError

DB_FILE = "circuits.db"
STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
INTERRUPTED = "interrupted"
MANIFEST_FILE = "manifest.json"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress_done INTEGER,
    progress_total INTEGER,
    progress_message TEXT,
    run_id TEXT,
    result TEXT,
    log TEXT,
    worker TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    job_id TEXT,
    task TEXT,
    model TEXT,
    method TEXT,
    faithfulness REAL,
    edges INTEGER,
    edges_total INTEGER,
    created TEXT NOT NULL
);
"""


def now() -> str:
    """The current UTC time as ISO 8601 with milliseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_store() -> Path:
    """``$CIRCUITS_STORE``, else ``$XDG_DATA_HOME/circuits/store`` (``~/.local/share/circuits/store``)."""
    root = os.environ.get("CIRCUITS_STORE")
    if root:
        return Path(root).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "circuits" / "store"


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    params: Mapping[str, Any]
    state: str
    created: str
    started: Optional[str]
    finished: Optional[str]
    error: Optional[str]
    attempts: int
    progress: Optional[Mapping[str, Any]]
    run_id: Optional[str]
    result: Any = None
    log: Optional[str] = None
    worker: Optional[Mapping[str, Any]] = None  # {"pid": ..., "loaded_models": [...]} of the process that ran it

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        progress = None
        if row["progress_total"] is not None:
            progress = {"done": row["progress_done"], "total": row["progress_total"], "message": row["progress_message"] or ""}
        return cls(id=row["id"], kind=row["kind"], params=json.loads(row["params"]), state=row["state"],
                   created=row["created"], started=row["started"], finished=row["finished"], error=row["error"],
                   attempts=row["attempts"], progress=progress, run_id=row["run_id"],
                   result=None if row["result"] is None else json.loads(row["result"]), log=row["log"],
                   worker=None if row["worker"] is None else json.loads(row["worker"]))

    def public(self, *, log: bool = False) -> Dict[str, Any]:
        """The job as the API shows it."""
        out = {"id": self.id, "kind": self.kind, "state": self.state, "params": dict(self.params),
               "created": self.created, "started": self.started, "finished": self.finished, "error": self.error,
               "attempts": self.attempts, "progress": self.progress, "run_id": self.run_id, "result": self.result,
               "worker": None if self.worker is None else dict(self.worker)}
        if log:
            out["log"] = self.log
        return out


@dataclass(frozen=True)
class Run:
    id: str
    job_id: Optional[str]
    task: Optional[str]
    model: Optional[str]
    method: Optional[str]
    faithfulness: Optional[float]
    edges: Optional[int]
    edges_total: Optional[int]
    created: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Run":
        return cls(**{k: row[k] for k in ("id", "job_id", "task", "model", "method", "faithfulness", "edges",
                                          "edges_total", "created")})

    def public(self) -> Dict[str, Any]:
        return {"id": self.id, "job_id": self.job_id, "task": self.task, "model": self.model, "method": self.method,
                "faithfulness": self.faithfulness, "edges": self.edges, "edges_total": self.edges_total,
                "created": self.created}


class Store:
    """The store at ``root``.  Every call opens its own short-lived connection, so any thread may use it."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root).expanduser()
        self.db = self.root / DB_FILE
        self.runs_dir = self.root / "runs"
        self.outputs_dir = self.root / "outputs"
        self.tmp_dir = self.root / "tmp"

    # ----- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, root: Union[str, Path]) -> "Store":
        """Open the store at ``root``, making its folders and tables if needed."""
        store = cls(root)
        try:
            for folder in (store.root, store.runs_dir, store.outputs_dir, store.tmp_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CircuitsError(f"cannot create the store {store.root} ({exc.strerror or exc}); pass a writable --store DIR") from None
        with store.connect() as db:
            db.executescript(_SCHEMA)
        return store

    @classmethod
    def existing(cls, root: Union[str, Path]) -> "Store":
        """Open a store that must exist already (for the ``circuits runs`` commands)."""
        store = cls(root)
        if not store.db.is_file():
            raise CircuitsError(f"no store at {store.root} (no {DB_FILE}); start `circuits serve --store {store.root}` "
                                "first, or pass the --store DIR it uses")
        return store

    def connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise CircuitsError(f"cannot open {self.db}: {exc}") from None
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def integrity(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer (``ok`` for a sound database)."""
        with self._db() as db:
            return db.execute("PRAGMA integrity_check").fetchone()[0]

    class _Conn:
        def __init__(self, store: "Store") -> None:
            self.db = store.connect()

        def __enter__(self) -> sqlite3.Connection:
            return self.db

        def __exit__(self, *exc) -> None:
            self.db.close()

    def _db(self) -> "_Conn":
        return Store._Conn(self)

    # ----- jobs ----------------------------------------------------------------------------
    def add_job(self, kind: str, params: Mapping[str, Any]) -> Job:
        job_id = uuid.uuid4().hex[:12]
        with self._db() as db:
            db.execute("INSERT INTO jobs (id, kind, params, state, created) VALUES (?, ?, ?, 'queued', ?)",
                       (job_id, kind, json.dumps(dict(params), sort_keys=True), now()))
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> Optional[Job]:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_row(row)

    def count_jobs(self, state: str) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (state,)).fetchone()[0])

    def list_jobs(self, state: Optional[str] = None, limit: int = 100) -> List[Job]:
        query, args = "SELECT * FROM jobs", []
        if state is not None:
            query, args = query + " WHERE state = ?", [state]
        with self._db() as db:
            rows = db.execute(query + " ORDER BY seq DESC LIMIT ?", (*args, int(limit))).fetchall()
        return [Job.from_row(r) for r in rows]

    def states(self, job_ids) -> Dict[str, str]:
        ids = list(job_ids)
        if not ids:
            return {}
        with self._db() as db:
            rows = db.execute(f"SELECT id, state FROM jobs WHERE id IN ({','.join('?' * len(ids))})", ids).fetchall()
        return {r["id"]: r["state"] for r in rows}

    def claim_next(self) -> Optional[Job]:
        """Mark the oldest queued job running and return it (None when the queue is empty)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            db.execute("UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, progress_done = NULL, "
                       "progress_total = NULL, progress_message = NULL WHERE id = ?", (now(), row["id"]))
            db.execute("COMMIT")
        return self.get_job(row["id"])

    def set_progress(self, job_id: str, done: int, total: int, message: str) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET progress_done = ?, progress_total = ?, progress_message = ? "
                       "WHERE id = ? AND state = 'running'", (int(done), int(total), str(message)[:200], job_id))

    def set_worker(self, job_id: str, worker: Mapping[str, Any]) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET worker = ? WHERE id = ?", (json.dumps(dict(worker)), job_id))

    def finish(self, job_id: str, state: str, *, error: Optional[str] = None, result: Any = None,
               log: Optional[str] = None, run_id: Optional[str] = None, worker: Optional[Mapping[str, Any]] = None,
               db: Optional[sqlite3.Connection] = None) -> bool:
        """Move a running job to ``state``; False when it was not running any more (cancelled meanwhile)."""
        assert state in FINAL_STATES
        args = (state, now(), error, None if result is None else json.dumps(result), log, run_id,
                None if worker is None else json.dumps(dict(worker)), job_id)
        sql = ("UPDATE jobs SET state = ?, finished = ?, error = ?, result = ?, log = ?, run_id = ?, "
               "worker = COALESCE(?, worker) WHERE id = ? AND state = 'running'")
        if db is not None:
            return db.execute(sql, args).rowcount == 1
        with self._db() as conn:
            return conn.execute(sql, args).rowcount == 1

    def cancel(self, job_id: str) -> Optional[str]:
        """Cancel a queued or running job; the state it was in (None if there is no such job).

        A running job is marked ``cancelled`` here; the dispatcher sees it and stops its worker."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            if row["state"] in ("queued", "running"):
                db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, error = ? WHERE id = ?",
                           (now(), f"cancelled while {row['state']}", job_id))
            db.execute("COMMIT")
            return row["state"]

    def recover(self, *, requeue: bool = False) -> Dict[str, List[str]]:
        """At server start: empty ``tmp/``; a job left ``running`` by a dead server becomes ``done`` if
        its run folder was already renamed into place, else ``failed`` (``interrupted``) or, with
        ``requeue``, ``queued`` again.  Returns the job ids per outcome."""
        for leftover in self.tmp_dir.iterdir() if self.tmp_dir.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        outcome: Dict[str, List[str]] = {"done": [], "failed": [], "queued": []}
        for job in self.list_jobs("running", limit=1_000_000):
            folder = self.runs_dir / job.id
            if job.kind == "discover" and (folder / MANIFEST_FILE).is_file():
                with self._db() as db:
                    db.execute("BEGIN IMMEDIATE")
                    self._index(db, job.id, job.id, folder)
                    self.finish(job.id, "done", run_id=job.id, db=db)
                    db.execute("COMMIT")
                outcome["done"].append(job.id)
            elif requeue:
                with self._db() as db:
                    db.execute("UPDATE jobs SET state = 'queued', started = NULL, error = NULL WHERE id = ?", (job.id,))
                outcome["queued"].append(job.id)
            else:
                self.finish(job.id, "failed", error=INTERRUPTED)
                outcome["failed"].append(job.id)
        return outcome

    # ----- job folders and runs --------------------------------------------------------------
    def tmp_folder(self, job_id: str) -> Path:
        """A fresh, empty temporary folder for job ``job_id``."""
        folder = self.tmp_dir / job_id
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def discard_tmp(self, job_id: str) -> None:
        shutil.rmtree(self.tmp_dir / job_id, ignore_errors=True)

    def publish(self, job_id: str, kind: str, *, result: Any = None, log: Optional[str] = None,
                worker: Optional[Mapping[str, Any]] = None) -> bool:
        """Rename the job's complete temporary folder into place and mark the job done in one transaction.

        ``discover`` folders go to ``runs/ID`` and are indexed; ``analyze`` folders go to ``outputs/ID``.
        False (and the folder discarded) when the job was cancelled meanwhile."""
        tmp = self.tmp_dir / job_id
        if self.get_job(job_id).state != "running":
            self.discard_tmp(job_id)
            return False
        target = (self.runs_dir if kind == "discover" else self.outputs_dir) / job_id
        os.replace(tmp, target)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            run_id = None
            if kind == "discover":
                self._index(db, job_id, job_id, target)
                run_id = job_id
            ok = self.finish(job_id, "done", result=result, log=log, run_id=run_id, worker=worker, db=db)
            if not ok:  # cancelled between the check and the rename
                db.execute("ROLLBACK")
                shutil.rmtree(target, ignore_errors=True)
                return False
            db.execute("COMMIT")
        return True

    def _index(self, db: sqlite3.Connection, run_id: str, job_id: Optional[str], folder: Path) -> None:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        db.execute("INSERT OR REPLACE INTO runs (id, job_id, task, model, method, faithfulness, edges, edges_total, created) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (run_id, job_id, manifest.get("task"), manifest.get("model"), manifest.get("method"),
                    manifest.get("faithfulness"), manifest.get("edges_kept"), manifest.get("edges_total"), now()))

    def list_runs(self, limit: int = 1000) -> List[Run]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY created DESC, id LIMIT ?", (int(limit),)).fetchall()
        return [Run.from_row(r) for r in rows]

    def get_run(self, run_id: str) -> Optional[Run]:
        with self._db() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else Run.from_row(row)

    def run_folder(self, run_id: str) -> Optional[Path]:
        """The folder of indexed run ``run_id`` (None if there is no such run)."""
        if self.get_run(run_id) is None:
            return None
        folder = self.runs_dir / run_id
        return folder if folder.is_dir() else None

    def output_folder(self, job_id: str) -> Optional[Path]:
        job = self.get_job(job_id)
        if job is None or job.state != "done":
            return None
        folder = self.outputs_dir / job_id
        return folder if folder.is_dir() else None


def folder_files(folder: Path) -> List[str]:
    """The names of the regular files directly in ``folder`` (no links, no hidden or temporary files)."""
    names = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.is_symlink() or not entry.is_file():
            continue
        names.append(entry.name)
    return names


def safe_file(folder: Path, name: str) -> Optional[Path]:
    """``folder/name`` when ``name`` is exactly one of :func:`folder_files`, else None (``..``, absolute, links...)."""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    if name not in folder_files(folder):
        return None
    return folder / name


class ServerLock:
    """One server per store: an exclusive ``flock`` on ``ROOT/server.lock`` held while the server runs.

    The kernel drops it when the server dies, even by ``kill -9``, so a restart takes it again."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.path = Path(root).expanduser() / "server.lock"
        self.fd: Optional[int] = None

    def acquire(self) -> "ServerLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CircuitsError(f"another `circuits serve` is using the store {self.path.parent}; stop it or pass "
                                "another --store DIR") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def check(self) -> None:
        """Raise if another server holds the lock (takes it and lets it go at once)."""
        self.acquire().release()
