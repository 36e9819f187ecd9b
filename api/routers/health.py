"""GET /health: is the service up, and which Dask cluster does it use."""

from __future__ import annotations

from fastapi import APIRouter

from distnmf_api.deps import ClusterDep, SettingsDep
from distnmf_api.schemas import Health
from distnmf import __version__

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
def health(cluster: ClusterDep, settings: SettingsDep) -> Health:
    """Status, the scheduler address, the number of workers and the dashboard URL (no auth)."""
    return Health(version=__version__, scheduler=cluster.address, n_workers=cluster.n_workers(),
                  dashboard_url=cluster.dashboard_url, auth=settings.api_token is not None, limits=settings.limits())
