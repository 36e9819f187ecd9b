"""The records the service sends and the client receives: one definition for both sides.

Standard library only, so the client needs neither pydantic nor the server. The service's
job store returns these records, its routes answer with them (FastAPI validates and documents
dataclasses), the analysis functions return :class:`Hit`, and the client parses into them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, TypeVar


class JobStatus(StrEnum):
    """Life cycle of a job: queued -> running [-> cancelling] -> succeeded | failed | cancelled.

    ``cancelling``: a cancel was asked while the job ran; it stops at its next iteration."""

    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended (it changes no more)."""
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


@dataclass(frozen=True)
class Hit:
    """One result of a query: position along its axis, its label (if stored) and its score."""

    index: int
    label: str | None
    score: float


@dataclass(frozen=True)
class MatrixRecord:
    """A registered matrix: shape (n_rows, n_cols), stored non-zeros, layout and labels."""

    id: str
    name: str
    format: str
    shape: tuple[int, int]
    nnz: int
    density: float
    is_sparse: bool
    image_shape: list[int] | None
    has_row_labels: bool
    has_col_labels: bool
    created_at: str


@dataclass(frozen=True)
class JobRecord:
    """A factorization job: its parameters, progress (relative error per iteration) and outcome.

    ``error`` is ``||X - WH|| / ||X||`` after the last iteration; ``message`` says why the job
    failed or was cancelled.
    """

    id: str
    matrix_id: str
    status: JobStatus
    params: dict[str, Any]
    iteration: int
    max_iter: int
    error: float | None
    error_history: list[float]
    message: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    dashboard_url: str | None = None
    # seconds per phase: validation, initialisation, iterations, writing, indexing
    timings: dict[str, float] | None = None


Record = TypeVar("Record", MatrixRecord, JobRecord)


@dataclass(frozen=True)
class JobPage:
    """One page of ``GET /jobs``: pass ``next_cursor`` as ``cursor`` for the next (None: the last page)."""

    items: list[JobRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class MatrixPage:
    """One page of ``GET /matrices``: pass ``next_cursor`` as ``cursor`` for the next (None: the last page)."""

    items: list[MatrixRecord]
    next_cursor: str | None


def from_json(cls: type[Record], data: dict[str, Any]) -> Record:
    """A record of type ``cls`` from its JSON object (unknown keys are ignored)."""
    values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
    if "shape" in values:
        values["shape"] = tuple(values["shape"])
    if "status" in values:
        values["status"] = JobStatus(values["status"])
    return cls(**values)


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event of ``GET /jobs/{id}/events``: ``kind`` is "state" (the status changed)
    or "progress" (an iteration ended: its relative ``error``; ``elapsed`` seconds since the job
    started and ``eta`` seconds to ``max_iter`` at the current pace, when the event is live).
    ``id`` orders the events of a job; send it back as ``Last-Event-ID`` to resume after it."""

    id: int
    kind: str
    status: JobStatus
    iteration: int
    max_iter: int
    error: float | None = None
    elapsed: float | None = None
    eta: float | None = None
    message: str | None = None


@dataclass(frozen=True)
class VersionInfo:
    """``GET /version``: the distnmf release, the API version in the path (``v1``), and library versions."""

    version: str
    api: str
    python: str
    faiss: str
