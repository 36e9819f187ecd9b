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
    """Life cycle of a job: queued -> running -> succeeded | failed | cancelled."""

    queued = "queued"
    running = "running"
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


Record = TypeVar("Record", MatrixRecord, JobRecord)


def from_json(cls: type[Record], data: dict[str, Any]) -> Record:
    """A record of type ``cls`` from its JSON object (unknown keys are ignored)."""
    values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
    if "shape" in values:
        values["shape"] = tuple(values["shape"])
    if "status" in values:
        values["status"] = JobStatus(values["status"])
    return cls(**values)
