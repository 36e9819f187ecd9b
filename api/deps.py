"""Request dependencies: settings, the job store, the runner, auth, and loaded records.

Those that only read app state or compare a token are ``async``: FastAPI runs a plain ``def``
dependency in its thread pool, and a thread hop per dependency dominated the cost of a fast query."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from distnmf.factors import Factors
from distnmf.wire import JobRecord, JobStatus
from distnmf_api.cluster import Cluster
from distnmf_api.job_runner import JobRunner
from distnmf_api.jobstore import JobStore, StoredMatrix
from distnmf_api.serving import Served
from distnmf_api.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


async def get_cluster(request: Request) -> Cluster:
    return request.app.state.cluster


SettingsDep = Annotated[Settings, Depends(get_settings)]
ClusterDep = Annotated[Cluster, Depends(get_cluster)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]

bearer = HTTPBearer(auto_error=False, description="Needed when the service runs with DISTNMF_API_TOKEN.")


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def authenticated(settings: SettingsDep, credentials: Credentials) -> bool:
    """Whether the request carries the service's token (never true when the service has none)."""
    if settings.api_token is None or credentials is None:
        return False
    return secrets.compare_digest(credentials.credentials.encode(), settings.api_token.get_secret_value().encode())


async def require_token(settings: SettingsDep, credentials: Credentials) -> None:
    """Check the bearer token in constant time when the service has one."""
    if settings.api_token is not None and not await authenticated(settings, credentials):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


AuthenticatedDep = Annotated[bool, Depends(authenticated)]


def stored_matrix(store: StoreDep, matrix_id: Annotated[str, Path(max_length=64)]) -> StoredMatrix:
    record = store.get_matrix(matrix_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no matrix with id {matrix_id!r}")
    return record


def stored_job(store: StoreDep, job_id: Annotated[str, Path(max_length=64)]) -> JobRecord:
    record = store.get_job(job_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job with id {job_id!r}")
    return record


MatrixDep = Annotated[StoredMatrix, Depends(stored_matrix)]
JobDep = Annotated[JobRecord, Depends(stored_job)]


async def get_served(request: Request) -> Served:
    return request.app.state.served


ServedDep = Annotated[Served, Depends(get_served)]


async def get_factors(store: StoreDep, settings: SettingsDep, served: ServedDep,
                      job_id: Annotated[str, Path(max_length=64)]) -> Factors:
    """The job's factors (opened once, in a worker thread, then kept by the service); 409 until the job
    has succeeded. Factors already open answer without a job store read: only a succeeded job's are
    opened, and deleting the job forgets them."""
    path = settings.layout.factors(job_id)
    if (opened := served.opened(path)) is not None:
        return opened
    job = await run_in_threadpool(stored_job, store, job_id)
    if job.status != JobStatus.succeeded:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"job {job.id} is {job.status}; its factors exist once it has succeeded")
    if job.params.get("kind") == "rank":
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job.id} selects a rank; it has no factors "
                                                       f"(its report is at /jobs/{job.id}/rank)")
    return await run_in_threadpool(served.factors, path)


FactorsDep = Annotated[Factors, Depends(get_factors)]


def finished_rank_job(job: JobDep) -> JobRecord:
    """A succeeded rank-selection job; 404 for other kinds of job, 409 until it has succeeded."""
    if job.params.get("kind") != "rank":
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job.id} is an NMF job; rank reports come from "
                                                       "jobs submitted with kind='rank'")
    if job.status != JobStatus.succeeded:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"job {job.id} is {job.status}; its rank report exists once it has succeeded")
    return job


RankJobDep = Annotated[JobRecord, Depends(finished_rank_job)]
