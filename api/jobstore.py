"""Matrix and job records in SQLite (stdlib ``sqlite3``, WAL mode); they survive restarts."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS matrices (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    owned INTEGER NOT NULL,
    n_rows INTEGER NOT NULL,
    n_cols INTEGER NOT NULL,
    nnz INTEGER NOT NULL,
    is_sparse INTEGER NOT NULL,
    image_shape TEXT,
    has_row_labels INTEGER NOT NULL,
    has_col_labels INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    matrix_id TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    iteration INTEGER NOT NULL DEFAULT 0,
    max_iter INTEGER NOT NULL,
    error REAL,
    error_history TEXT NOT NULL DEFAULT '[]',
    message TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""


class JobStatus(StrEnum):
    """Life cycle of a job: queued -> running -> succeeded | failed | cancelled."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


def now() -> str:
    return datetime.now(UTC).isoformat()


class JobStore:
    """One SQLite connection shared by the request threads and the job runner, behind a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _all(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [_decode(row) for row in self._db.execute(sql, args).fetchall()]

    def _one(self, sql: str, args: tuple = ()) -> dict[str, Any] | None:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def _run(self, sql: str, args: tuple = ()) -> int:
        with self._lock:
            return self._db.execute(sql, args).rowcount

    # -- matrices
    def add_matrix(self, record: dict[str, Any]) -> dict[str, Any]:
        record = {**record, "created_at": now(), "image_shape": _json(record.get("image_shape"))}
        columns = ", ".join(record)
        self._run(f"INSERT INTO matrices ({columns}) VALUES ({', '.join('?' * len(record))})",
                  tuple(record.values()))
        return self.get_matrix(record["id"])

    def get_matrix(self, matrix_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM matrices WHERE id = ?", (matrix_id,))

    def list_matrices(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM matrices ORDER BY created_at")

    def delete_matrix(self, matrix_id: str) -> None:
        self._run("DELETE FROM matrices WHERE id = ?", (matrix_id,))

    # -- jobs
    def add_job(self, job_id: str, matrix_id: str, params: dict[str, Any]) -> dict[str, Any]:
        self._run("INSERT INTO jobs (id, matrix_id, params, status, max_iter, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                  (job_id, matrix_id, _json(params), JobStatus.queued, params["max_iter"], now()))
        return self.get_job(job_id)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def list_jobs(self, status: JobStatus | None = None, matrix_id: str | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(str(status))
        if matrix_id is not None:
            where.append("matrix_id = ?")
            args.append(matrix_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._all(f"SELECT * FROM jobs{clause} ORDER BY seq", tuple(args))

    def unfinished_jobs(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY seq",
                         (JobStatus.queued, JobStatus.running))

    def start_job(self, job_id: str) -> bool:
        """Mark a queued job running; False if it is no longer queued (e.g. cancelled)."""
        return self._run("UPDATE jobs SET status = ?, started_at = ?, iteration = 0, error = NULL, "
                         "error_history = '[]', message = NULL WHERE id = ? AND status = ?",
                         (JobStatus.running, now(), job_id, JobStatus.queued)) == 1

    def record_progress(self, job_id: str, iteration: int, error: float, history: list[float]) -> None:
        self._run("UPDATE jobs SET iteration = ?, error = ?, error_history = ? WHERE id = ?",
                  (iteration, error, _json(history), job_id))

    def finish_job(self, job_id: str, status: JobStatus, message: str | None = None) -> None:
        self._run("UPDATE jobs SET status = ?, message = ?, finished_at = ? WHERE id = ?",
                  (status, message, now(), job_id))

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False if it is not queued."""
        return self._run("UPDATE jobs SET status = ?, message = ?, finished_at = ? WHERE id = ? AND status = ?",
                         (JobStatus.cancelled, "cancelled before it started", now(), job_id,
                          JobStatus.queued)) == 1

    def requeue(self, job_id: str) -> None:
        self._run("UPDATE jobs SET status = ?, started_at = NULL WHERE id = ?", (JobStatus.queued, job_id))


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for key in ("params", "error_history", "image_shape"):
        if record.get(key) is not None:
            record[key] = json.loads(record[key])
    for key in ("owned", "is_sparse", "has_row_labels", "has_col_labels"):
        if key in record:
            record[key] = bool(record[key])
    return record
