"""Matrix and job records in SQLite (stdlib ``sqlite3``, WAL mode); they survive restarts.

Reads return the typed records of :mod:`distnmf.wire` (:class:`StoredMatrix` adds where the
matrix lives, which never leaves the service). Writes wait up to ``busy_timeout`` seconds for
a lock another process holds, then raise ``sqlite3.OperationalError``; reads use their own
connection, which WAL never blocks, so status requests are answered while a write waits.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distnmf.wire import JobRecord, JobStatus, MatrixRecord

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
    finished_at TEXT,
    timings TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""


@dataclass(frozen=True)
class StoredMatrix(MatrixRecord):
    """A matrix record with its store's ``path`` (relative to the data directory) and whether the
    service ``owned`` it (ingested it, so deleting the record removes the store)."""

    path: str
    owned: bool


def now() -> str:
    return datetime.now(UTC).isoformat()


class JobStore:
    """Two SQLite connections (reads, writes), each shared by the request threads and the job
    runner behind its own lock."""

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._writer, self._write_lock = _connect(path, busy_timeout), threading.Lock()
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.executescript(SCHEMA)
        self._reader, self._read_lock = _connect(path, busy_timeout), threading.Lock()
        if "timings" not in {row["name"] for row in self._writer.execute("PRAGMA table_info(jobs)")}:
            self._writer.execute("ALTER TABLE jobs ADD COLUMN timings TEXT")  # a data directory of an earlier version

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            return self._reader.execute(sql, args).fetchall()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._write_lock:
            return self._writer.execute(sql, args).rowcount

    # -- matrices
    def add_matrix(self, matrix: StoredMatrix) -> StoredMatrix:
        """Record ``matrix`` (its ``created_at`` and ``density`` are recomputed) and return it as stored."""
        n_rows, n_cols = matrix.shape
        self._run("INSERT INTO matrices (id, name, path, format, owned, n_rows, n_cols, nnz, is_sparse, image_shape, "
                  "has_row_labels, has_col_labels, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (matrix.id, matrix.name, matrix.path, matrix.format, matrix.owned, n_rows, n_cols, matrix.nnz,
                   matrix.is_sparse, _json(matrix.image_shape), matrix.has_row_labels, matrix.has_col_labels, now()))
        stored = self.get_matrix(matrix.id)
        assert stored is not None
        return stored

    def get_matrix(self, matrix_id: str) -> StoredMatrix | None:
        rows = self._rows("SELECT * FROM matrices WHERE id = ?", (matrix_id,))
        return _matrix(rows[0]) if rows else None

    def list_matrices(self, *, after: str | None = None, limit: int | None = None) -> list[StoredMatrix]:
        """Matrices oldest first, those registered after matrix ``after`` first, at most ``limit``."""
        sql = "SELECT * FROM matrices"
        args: list[Any] = []
        if after is not None:
            sql += " WHERE (created_at, id) > (SELECT created_at, id FROM matrices WHERE id = ?)"
            args.append(after)
        sql += " ORDER BY created_at, id" + (" LIMIT ?" if limit is not None else "")
        args += [limit] if limit is not None else []
        return [_matrix(row) for row in self._rows(sql, tuple(args))]

    def delete_matrix(self, matrix_id: str) -> None:
        self._run("DELETE FROM matrices WHERE id = ?", (matrix_id,))

    # -- jobs
    def add_job(self, job_id: str, matrix_id: str, params: dict[str, Any]) -> JobRecord:
        """Queue a job; ``sqlite3.IntegrityError`` if ``job_id`` is taken."""
        self._run("INSERT INTO jobs (id, matrix_id, params, status, max_iter, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                  (job_id, matrix_id, _json(params), JobStatus.queued, params["max_iter"], now()))
        job = self.get_job(job_id)
        assert job is not None
        return job

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def list_jobs(self, status: JobStatus | None = None, matrix_id: str | None = None, *, after: str | None = None,
                  limit: int | None = None) -> list[JobRecord]:
        """Jobs in submission order, those submitted after job ``after`` first, at most ``limit``."""
        where: list[str] = []
        args: list[Any] = []
        if after is not None:
            where.append("seq > (SELECT seq FROM jobs WHERE id = ?)")
            args.append(after)
        if status is not None:
            where.append("status = ?")
            args.append(str(status))
        if matrix_id is not None:
            where.append("matrix_id = ?")
            args.append(matrix_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        if limit is not None:
            clause += " ORDER BY seq LIMIT ?"
            args.append(limit)
        else:
            clause += " ORDER BY seq"
        return [_job(row) for row in self._rows(f"SELECT * FROM jobs{clause}", tuple(args))]  # noqa: S608 - constants; values are bound

    def delete_job(self, job_id: str) -> bool:
        """Remove a finished job's record; False if it is not finished (or not there)."""
        return self._run("DELETE FROM jobs WHERE id = ? AND status IN (?, ?, ?)",
                         (job_id, JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)) == 1

    def mark_cancelling(self, job_id: str) -> bool:
        """Record that a running job was asked to stop; False if it is not running."""
        return self._run("UPDATE jobs SET status = ? WHERE id = ? AND status = ?",
                         (JobStatus.cancelling, job_id, JobStatus.running)) == 1

    def claim_next(self) -> JobRecord | None:
        """Mark the oldest queued job running and return its record as it was; None if none is queued."""
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                row = self._writer.execute("SELECT * FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
                                           (JobStatus.queued,)).fetchone()
                if row is not None:
                    self._writer.execute("UPDATE jobs SET status = ?, started_at = ?, message = NULL WHERE id = ?",
                                         (JobStatus.running, now(), row["id"]))
                self._writer.execute("COMMIT")
            except BaseException:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                raise
        return None if row is None else _job(row)

    def record_progress(self, job_id: str, iteration: int, error: float | None, history: list[float]) -> None:
        self._run("UPDATE jobs SET iteration = ?, error = ?, error_history = ? WHERE id = ?",
                  (iteration, error, _json(history), job_id))

    def record_timings(self, job_id: str, timings: dict[str, float]) -> None:
        """Seconds per phase of a job's fit (validation, initialisation, iterations, writing, indexing)."""
        self._run("UPDATE jobs SET timings = ? WHERE id = ?", (_json(timings), job_id))

    def finish_job(self, job_id: str, status: JobStatus, message: str | None = None) -> None:
        self._run("UPDATE jobs SET status = ?, message = ?, finished_at = ? WHERE id = ?",
                  (status, message, now(), job_id))

    def cancel_queued(self, job_id: str) -> bool:
        """Cancel a job that has not started; False if it is not queued."""
        return self._run("UPDATE jobs SET status = ?, message = ?, finished_at = ? WHERE id = ? AND status = ?",
                         (JobStatus.cancelled, "cancelled before it started", now(), job_id,
                          JobStatus.queued)) == 1

    def requeue(self, job_id: str, message: str | None = None) -> bool:
        """Put a running job back in the queue, ``message`` saying why (shown until it starts
        again); False if it is not running."""
        return self._run("UPDATE jobs SET status = ?, started_at = NULL, message = ? WHERE id = ? AND status = ?",
                         (JobStatus.queued, message, job_id, JobStatus.running)) == 1


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=busy_timeout, check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _matrix(row: sqlite3.Row) -> StoredMatrix:
    n_rows, n_cols = row["n_rows"], row["n_cols"]
    return StoredMatrix(id=row["id"], name=row["name"], format=row["format"], shape=(n_rows, n_cols), nnz=row["nnz"],
                        density=row["nnz"] / (n_rows * n_cols), is_sparse=bool(row["is_sparse"]),
                        image_shape=_loads(row["image_shape"]), has_row_labels=bool(row["has_row_labels"]),
                        has_col_labels=bool(row["has_col_labels"]), created_at=row["created_at"], path=row["path"],
                        owned=bool(row["owned"]))


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(id=row["id"], matrix_id=row["matrix_id"], status=JobStatus(row["status"]),
                     params=json.loads(row["params"]), iteration=row["iteration"], max_iter=row["max_iter"],
                     error=row["error"], error_history=json.loads(row["error_history"]), message=row["message"],
                     created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
                     timings=_loads(row["timings"]))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
