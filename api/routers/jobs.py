"""Jobs: submit (idempotent with a job_id or an Idempotency-Key), list a page at a time, status with
long-polling, live events, cancel, delete."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from distnmf import storage
from distnmf.validation import check_rank
from distnmf.wire import JobPage, JobRecord, JobStatus
from distnmf_api import events
from distnmf_api.cluster import Cluster
from distnmf_api.deps import ClusterDep, JobDep, RunnerDep, ServedDep, SettingsDep, StoreDep
from distnmf_api.errors import Unprocessable
from distnmf_api.schemas import NAME_PATTERN, BetaLoss, Error, JobKind, SubmitJob

router = APIRouter(prefix="/jobs", tags=["jobs"])

POLL_SECONDS = 0.2
KEEP_ALIVE_SECONDS = 15.0
SSE_EVENT = {"type": "object", "required": ["id", "event", "data"], "properties": {
    "id": {"type": "string", "description": "Send it back as Last-Event-ID to resume after this event."},
    "event": {"type": "string", "enum": ["state", "progress"]},
    "data": {"type": "string", "contentMediaType": "application/json",
             "description": "A JobEvent: id, kind, status, iteration, max_iter, error, elapsed, eta, message."}}}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobRecord,
             responses={404: {"model": Error, "description": "No such matrix"},
                        409: {"model": Error, "description": "job_id already used with another body"},
                        422: {"description": "Invalid parameters or a limit exceeded"}})
def submit_job(body: SubmitJob, store: StoreDep, runner: RunnerDep, settings: SettingsDep,
               cluster: ClusterDep,
               idempotency_key: Annotated[str | None, Header(pattern=NAME_PATTERN, description=(
                   "Makes the submission safe to retry, as a job_id does: it becomes the job's id"))] = None,
               ) -> JobRecord:
    """Queue a factorization of a registered matrix (kind "nmf"), or a cross-validated choice of
    its rank among ``ks`` (kind "rank": report at ``/jobs/{id}/rank``, plot at ``/jobs/{id}/rank.png``);
    it runs on the cluster without blocking.

    With a ``job_id`` (or an ``Idempotency-Key`` header, which becomes the job's id), submitting
    the same body again returns the same job (safe to retry); the same id with another body is a 409.
    """
    if body.job_id and idempotency_key and body.job_id != idempotency_key:
        raise Unprocessable(f"job_id {body.job_id!r} and Idempotency-Key {idempotency_key!r} differ; send one")
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
    job_id = body.job_id or idempotency_key or uuid.uuid4().hex[:16]
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


@router.get("", response_model=JobPage, responses={404: {"model": Error, "description": "Unknown cursor"}})
def list_jobs(store: StoreDep, cluster: ClusterDep, status: JobStatus | None = None,
              matrix_id: Annotated[str | None, Query(max_length=64)] = None,
              limit: Annotated[int, Query(ge=1, le=1000, description="Jobs per page")] = 100,
              cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")]
              = None) -> JobPage:
    """Jobs in submission order, a page at a time, optionally only those with a status or on one matrix."""
    if cursor is not None and store.get_job(cursor) is None:
        raise HTTPException(HTTPStatus.NOT_FOUND, f"cursor {cursor!r} names no job (it may have been deleted)")
    records = store.list_jobs(status, matrix_id, after=cursor, limit=limit + 1)
    more = len(records) > limit
    items = [_with_dashboard(r, cluster) for r in records[:limit]]
    return JobPage(items=items, next_cursor=items[-1].id if more else None)


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
    write (its cluster work is freed); a running job shows ``cancelling`` until it has stopped."""
    if job.status in (JobStatus.cancelled, JobStatus.cancelling):
        return _with_dashboard(job, cluster)
    if job.status.is_terminal:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job.id} already {job.status}")
    runner.cancel(job.id)
    store.mark_cancelling(job.id)
    return _with_dashboard(store.get_job(job.id) or job, cluster)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT,
               responses={404: {"model": Error}, 409: {"model": Error, "description": "The job has not finished"}})
def delete_job(job: JobDep, store: StoreDep, settings: SettingsDep, served: ServedDep) -> None:
    """Delete a finished job with its factors, similarity index and pictures (cancel a running one first)."""
    if not job.status.is_terminal or not store.delete_job(job.id):
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"job {job.id} is {job.status}; cancel it and delete it once it has stopped")
    factors = settings.layout.factors(job.id)
    served.forget(factors)
    for location in (factors, settings.layout.checkpoint(job.id)):
        storage.remove(location)
    shutil.rmtree(settings.layout.plot(job.id, "loss").parent, ignore_errors=True)


def _with_dashboard(job: JobRecord, cluster: Cluster) -> JobRecord:
    return dataclasses.replace(job, dashboard_url=cluster.dashboard_url)


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                             "description": "Server-sent events, each `id`, `event` (state or progress) and "
                                            "`data` (a JobEvent as JSON); the stream ends when the job does"},
                       404: {"model": Error}})
async def job_events(job: JobDep, store: StoreDep,
                     last_event_id: Annotated[int | None, Header(ge=-1, description="Resume after this event id")]
                     = None) -> StreamingResponse:
    """The job's progress as it happens: a "state" event for each status change and a "progress" event per
    iteration (relative error, elapsed seconds, estimated seconds left). Past iterations are replayed
    first; with ``Last-Event-ID`` only the events after it come."""

    async def stream() -> AsyncIterator[str]:
        record, last_id, sent_status = job, -1 if last_event_id is None else last_event_id, None
        beat = time.monotonic()
        while record is not None:
            pending = events.progress_events(record, max(0, last_id // 8))
            if record.status != sent_status:
                pending.append(events.state_event(record, max(0, last_id // 8)))
                sent_status = record.status
            for event in sorted(pending, key=lambda e: e.id):
                if event.id > last_id:
                    yield events.sse(event)
                    last_id, beat = event.id, time.monotonic()
            if record.status.is_terminal:
                return
            if time.monotonic() - beat > KEEP_ALIVE_SECONDS:
                yield ": keep-alive\n\n"
                beat = time.monotonic()
            await asyncio.sleep(POLL_SECONDS)
            latest = await run_in_threadpool(store.get_job, record.id)
            if latest is None:  # deleted meanwhile
                return
            record = latest

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
