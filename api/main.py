"""The FastAPI app factory: settings, the job store and runner in the lifespan, one router per resource."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from threadpoolctl import threadpool_limits

from distnmf import __version__
from distnmf_api import errors, guards
from distnmf_api.cluster import Cluster
from distnmf_api.deps import require_token
from distnmf_api.job_runner import JobRunner
from distnmf_api.jobstore import JobStore
from distnmf_api.query_workers import QueryWorkers
from distnmf_api.routers import API_PREFIX, health, jobs, matrices, results, version
from distnmf_api.routers.pages import add_pages
from distnmf_api.serving import Served, ready_to_serve
from distnmf_api.settings import Settings

log = logging.getLogger("distnmf.api")


def create_app(settings: Settings | None = None, query_workers: QueryWorkers | None = None) -> FastAPI:
    """Build the service. On start it creates the data directory and the SQLite schema,
    connects to (or starts) the Dask cluster, re-queues jobs a previous run left unfinished and
    starts the ``query_workers`` processes (stopped first when it stops).
    Whoever serves the app holds the data directory's lock (:mod:`distnmf_api.server` does)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = JobStore(settings.layout.sqlite)
        cluster = await asyncio.to_thread(Cluster, settings)
        runner = JobRunner(settings, store, cluster)
        app.state.settings, app.state.store, app.state.cluster, app.state.runner = settings, store, cluster, runner
        runner.start()
        if query_workers is not None:
            await asyncio.to_thread(query_workers.start)
        blas = threadpool_limits(limits=1, user_api="blas")  # queries run in parallel threads: one BLAS thread each
        await asyncio.to_thread(ready_to_serve)
        log.info("distnmf service ready: data in %s, stores in %s, scheduler %s, dashboard %s",
                 settings.data_dir.resolve(), settings.layout.store_root, cluster.address, cluster.dashboard_url)
        try:
            yield
        finally:
            if query_workers is not None:
                await asyncio.to_thread(query_workers.stop)
            blas.restore_original_limits()
            await asyncio.to_thread(runner.stop)
            await asyncio.to_thread(cluster.close)
            store.close()

    app = FastAPI(title="distnmf", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  summary="Distributed, out-of-core NMF: register matrices, run jobs on Dask, query the factors.")
    add_pages(app)
    app.state.query_workers = query_workers
    app.state.served = Served(settings.index_memory_bytes, settings.approximate_from_rows,
                              settings.layout.served_generation)
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(health.router)
    api.include_router(version.router)
    protected = [Depends(require_token)]
    api.include_router(matrices.router, dependencies=protected)
    api.include_router(jobs.router, dependencies=protected)
    api.include_router(results.router, dependencies=protected)
    app.include_router(api)
    guards.install(app, settings)
    errors.install(app)
    return app
