"""The wire records are one definition shared by the job store, the routes, the analysis and the client."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest
from fastapi.testclient import TestClient

from distnmf import analysis, async_client, wire
from distnmf.wire import JobRecord, JobStatus, MatrixRecord, from_json
from distnmf_api import schemas
from distnmf_api.jobstore import JobStore, StoredMatrix


def test_is_terminal() -> None:
    assert {s for s in JobStatus if s.is_terminal} == {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}


def test_one_definition_each() -> None:
    assert async_client.Hit is analysis.Hit is wire.Hit
    assert async_client.JobStatus is wire.JobStatus and async_client.MatrixRecord is wire.MatrixRecord
    for name in ("Hit", "MatrixRecord", "JobRecord", "JobStatus"):
        assert not hasattr(schemas, name) or getattr(schemas, name) is getattr(wire, name), name


def _matrix(matrix_id: str = "m1") -> StoredMatrix:
    return StoredMatrix(id=matrix_id, name="tags", format="zarr", shape=(4, 5), nnz=10, density=0.5, is_sparse=True,
                        image_shape=None, has_row_labels=True, has_col_labels=False, created_at="",
                        path="stores/tags.zarr", owned=False)


def test_job_store_returns_typed_records(tmp_path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite")
    try:
        matrix = store.add_matrix(_matrix())
        assert isinstance(matrix, StoredMatrix) and matrix.shape == (4, 5) and matrix.created_at
        assert store.list_matrices() == [matrix]
        job = store.add_job("j1", "m1", {"max_iter": 7, "n_components": 2})
        assert isinstance(job, JobRecord) and job.status is JobStatus.queued and job.max_iter == 7
        with pytest.raises(sqlite3.IntegrityError):
            store.add_job("j1", "m1", {"max_iter": 7})
        assert store.claim_next() == job and store.claim_next() is None
        store.record_progress("j1", 2, 0.5, [0.7, 0.5])
        store.finish_job("j1", JobStatus.succeeded)
        done = store.get_job("j1")
        assert done is not None and done.status.is_terminal and done.error_history == [0.7, 0.5]
        assert not store.requeue("j1") and store.list_jobs(JobStatus.succeeded, "m1") == [done]
    finally:
        store.close()


def test_client_parses_what_the_routes_send() -> None:
    """A record serialized the way the service answers parses back to an equal record."""
    from fastapi import FastAPI

    app = FastAPI()
    stored = _matrix()
    job = JobRecord(id="j", matrix_id="m1", status=JobStatus.running, params={"n_components": 2}, iteration=3,
                    max_iter=10, error=0.25, error_history=[0.5, 0.25], message=None, created_at="t0",
                    started_at="t1", finished_at=None, dashboard_url="http://127.0.0.1:8787/status")
    app.get("/matrix", response_model=MatrixRecord)(lambda: stored)
    app.get("/job", response_model=JobRecord)(lambda: job)
    with TestClient(app) as http:
        sent = http.get("/matrix").json()
        assert "path" not in sent and "owned" not in sent  # the response model drops where it lives
        assert from_json(MatrixRecord, sent) == MatrixRecord(**{f.name: getattr(stored, f.name)
                                                                for f in dataclasses.fields(MatrixRecord)})
        assert from_json(JobRecord, http.get("/job").json()) == job
