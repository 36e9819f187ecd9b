"""Service settings, read from ``DISTNMF_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from distnmf_api.layout import DataDir


LIMITS = ("max_upload_bytes", "max_components", "max_iter", "max_k", "max_range", "max_transform_rows")


class Settings(BaseSettings):
    """Everything the service can be configured with; each field is ``DISTNMF_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DISTNMF_")

    data_dir: Path = Field(Path("distnmf-data"), description="Matrices, factors and the SQLite file live here.")
    scheduler: str | None = Field(None, description="Dask scheduler address; none starts a LocalCluster.")
    api_token: SecretStr | None = Field(None, description="Bearer token; none binds the service to 127.0.0.1.")
    n_workers: int | None = Field(None, ge=1, description="Workers of the embedded LocalCluster (default: cores).")
    max_concurrent_jobs: int = Field(1, ge=1, description="Jobs running on the cluster at the same time.")
    max_upload_bytes: int = Field(2 * 2**30, ge=1, description="Largest accepted upload.")
    max_components: int = Field(1000, ge=1, description="Largest n_components of a job.")
    max_iter: int = Field(10_000, ge=1, description="Largest max_iter of a job.")
    max_k: int = Field(1000, ge=1, description="Largest k (or top) in queries.")
    max_range: int = Field(2**22, ge=1, description="Most rows (W) or columns (H) in one factor download.")
    max_transform_rows: int = Field(10_000, ge=1, description="Most rows in one transform request.")
    index_memory_bytes: int = Field(4 * 2**30, ge=0, description="Memory for similarity indexes held for "
                                    "finished jobs (least recently used evicted); 0 scans W from storage per query.")
    approximate_from_rows: int = Field(200_000, ge=0, description="Rows from which similarity queries use a faiss "
                                       "index (HNSW, IVF above 5 M) instead of an exact in-memory scan.")

    @property
    def layout(self) -> DataDir:
        """Where everything lives under ``data_dir``."""
        return DataDir(self.data_dir)

    def limit_error(self, name: str, what: str, value: int) -> str | None:
        """A message naming the limit ``name`` when ``value`` (of ``what``) exceeds it, else None."""
        limit = getattr(self, name)
        if value <= limit:
            return None
        return f"{what}={value} exceeds the limit {name}={limit} (set DISTNMF_{name.upper()} to change it)"

    def limits(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in LIMITS}
