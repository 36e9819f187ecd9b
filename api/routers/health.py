"""GET /health: is the service up, is its Dask cluster usable, and which one is it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from distnmf import __version__
from distnmf_api.deps import AuthenticatedDep, ClusterDep, SettingsDep
from distnmf_api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(request: Request, cluster: ClusterDep, settings: SettingsDep, authenticated: AuthenticatedDep) -> Health:
    """Status (``degraded`` with the problem while there is no scheduler or no worker; jobs wait
    meanwhile), the number of workers, the dashboard URL, the limits and the query worker processes
    running (no auth); the scheduler address only to requests with the service's token (never when
    the service has none)."""
    state = cluster.state
    problem = state.problem
    workers = request.app.state.query_workers
    return Health(status="degraded" if problem else "ok", problem=problem, version=__version__,
                  scheduler=cluster.address if authenticated else None, n_workers=state.n_workers,
                  dashboard_url=cluster.dashboard_url, auth=settings.api_token is not None, limits=settings.limits(),
                  query_workers=workers.running if workers else 0,
                  query_worker_restarts=workers.restarts if workers else 0)
