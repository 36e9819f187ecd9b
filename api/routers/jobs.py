"""Jobs: submit (idempotent with a job_id), list, status with long-polling, cancel."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool

from distnmf.store import check_rank
from distnmf.wire import JobRecord, JobStatus
from distnmf_api.deps import ClusterDep, JobDep, RunnerDep, SettingsDep, StoreDep
from distnmf_api.errors import Unprocessable
from distnmf_api.job_runner import Cluster
from distnmf_api.schemas import BetaLoss, Error, JobKind, SubmitJob

router = APIRouter(prefix="/jobs", tags=["jobs"])

POLL_SECONDS = 0.2


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobRecord,
             responses={404: {"model": Error, "description": "No such matrix"},
                        409: {"model": Error, "description": "job_id already used with another body"},
                        422: {"description": "Invalid parameters or a limit exceeded"}})
def submit_job(body: SubmitJob, store: StoreDep, runner: RunnerDep, settings: SettingsDep,
               cluster: ClusterDep) -> JobRecord:
    """Queue a factorization of a registered matrix (kind "nmf"), or a cross-validated choice of
    its rank among ``ks`` (kind "rank": report at ``/jobs/{id}/rank``, plot at ``/jobs/{id}/rank.png``);
    it runs on the cluster without blocking.

    With a ``job_id``, submitting the same body again returns the same job (safe to retry);
    the same ``job_id`` with another body is a 409.
    """
    ranks = body.ranks()
    what = "n_components" if body.kind == JobKind.nmf else "max(ks)"
    for limit, name, value in (("max_components", what, max(ranks)), ("max_iter", "max_iter", body.max_iter)):
        if message := settings.limit_error(limit, name, value):
            raise Unprocessable(message)
    matrix = store.get_matrix(body.matrix_id)
    if matrix is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no matrix with id {body.matrix_id!r}")
    try:
        for k in ranks:
            check_rank(k, matrix.shape, "n_components" if body.kind == JobKind.nmf else "each of ks")
    except ValueError as exc:
        raise Unprocessable(f"matrix {matrix.id}: {exc}") from None
    n_rows, n_cols = matrix.shape
    if body.beta_loss == BetaLoss.itakura_saito and matrix.nnz < n_rows * n_cols:
        raise Unprocessable("beta_loss='itakura-saito' needs a matrix without zeros; this one has zeros")
    params = body.params()
    job_id = body.job_id or uuid.uuid4().hex[:16]
    try:
        record = store.add_job(job_id, body.matrix_id, params)
    except sqlite3.IntegrityError:
        existing = store.get_job(job_id)
        if existing is None or existing.matrix_id != body.matrix_id or existing.params != params:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"job_id {job_id!r} was already submitted with a different body") from None
        return _with_dashboard(existing, cluster)
    runner.submit(job_id)
    return _with_dashboard(record, cluster)


@router.get("", response_model=list[JobRecord])
def list_jobs(store: StoreDep, cluster: ClusterDep, status: JobStatus | None = None,
              matrix_id: Annotated[str | None, Query(max_length=64)] = None) -> list[JobRecord]:
    """All jobs in submission order, optionally only those with a status or on one matrix."""
    return [_with_dashboard(r, cluster) for r in store.list_jobs(status, matrix_id)]


@router.get("/{job_id}", response_model=JobRecord, responses={404: {"model": Error}})
async def get_job(job: JobDep, store: StoreDep, cluster: ClusterDep,
                  wait: Annotated[float, Query(ge=0, le=60, description="Long-poll up to this many seconds")] = 0,
                  after: Annotated[int | None, Query(ge=-1, description="With wait: return once the iteration "
                                                                         "is past this (default: the current)")] = None,
                  ) -> JobRecord:
    """Status, iteration, relative error and its history, timestamps, dashboard URL, failure message.

    With ``wait``, the answer comes as soon as the job finishes or its iteration passes
    ``after``, or after ``wait`` seconds: a client can follow progress without busy polling.
    """
    after = job.iteration if after is None else after
    deadline = time.monotonic() + wait
    while not job.status.is_terminal and job.iteration <= after and time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        latest = await run_in_threadpool(store.get_job, job.id)
        job = latest or job
    return _with_dashboard(job, cluster)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobRecord,
             responses={404: {"model": Error}, 409: {"model": Error, "description": "The job already finished"}})
def cancel_job(job: JobDep, store: StoreDep, runner: RunnerDep, cluster: ClusterDep) -> JobRecord:
    """Cancel a queued job, or stop a running one at once, even during initialisation or the final
    write (its cluster work is freed)."""
    if job.status == JobStatus.cancelled:
        return _with_dashboard(job, cluster)
    if job.status.is_terminal:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} already {job.status}")
    runner.cancel(job.id)
    return _with_dashboard(store.get_job(job.id) or job, cluster)


def _with_dashboard(job: JobRecord, cluster: Cluster) -> JobRecord:
    return dataclasses.replace(job, dashboard_url=cluster.dashboard_url)
