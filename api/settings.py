"""Service settings, read from ``DISTNMF_*`` environment variables."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Literal

import dask.system
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from distnmf import storage
from distnmf.ingest.limits import IngestLimits
from distnmf_api.layout import DataDir

LIMITS = ("max_upload_bytes", "max_json_bytes", "max_components", "max_iter", "max_k", "max_range",
          "max_transform_rows", "max_rows", "max_cols", "max_values", "max_line_bytes", "ingest_memory_bytes")
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1"]


class Settings(BaseSettings):
    """Everything the service can be configured with; each field is ``DISTNMF_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="DISTNMF_")

    data_dir: Path = Field(Path("distnmf-data"), description="The SQLite file, uploads in transit and plots live "
                           "here; also matrices, factors and checkpoints unless storage_root is set.")
    storage_root: str | None = Field(None, description="Where matrices, factors and checkpoints live when not in "
                                     "data_dir: a folder every worker sees, or a URL such as s3://bucket/distnmf "
                                     "(credentials and endpoint from the storage library's environment, e.g. "
                                     "AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL).")
    scheduler: str | None = Field(None, description="Dask scheduler address; none starts a LocalCluster "
                                                    "secured with temporary TLS certificates.")
    tls_ca_file: Path | None = Field(None, description="CA certificate of an external TLS Dask scheduler.")
    tls_cert: Path | None = Field(None, description="Client certificate for an external TLS Dask scheduler.")
    tls_key: Path | None = Field(None, description="Key of tls_cert (omit when tls_cert holds both).")
    api_token: SecretStr | None = Field(None, description="Bearer token; none binds the service to 127.0.0.1.")
    allowed_hosts: list[str] = Field(default_factory=list,
                                     description="Host header values accepted besides the loopback names and the "
                                                 "bound host (JSON list; '*' accepts any, e.g. behind a proxy).")
    cors_origins: list[str] = Field(default_factory=list,
                                    description="Browser origins (scheme://host:port) allowed to call the API "
                                                "cross-site; none by default (JSON list).")
    n_workers: int | None = Field(None, ge=1, description="Workers of the embedded LocalCluster (default: cores).")
    max_concurrent_jobs: int = Field(1, ge=1, description="Jobs running on the cluster at the same time.")
    one_task_fits: Literal["auto", "always", "never"] = Field(
        "auto", description="Run a job as one task on one worker (the in-process engine there, no per-iteration "
        "round trips): 'auto' when its fit fits a worker's task memory and its work per iteration is small "
        "(distnmf.one_task.fits_one_task), 'always' whenever it fits the memory, 'never' (block-parallel).")
    max_upload_bytes: int = Field(2 * 2**30, ge=1, description="Largest accepted upload.")
    max_json_bytes: int = Field(16 * 2**20, ge=1024, description="Largest JSON request body.")
    max_components: int = Field(1000, ge=1, description="Largest n_components of a job.")
    max_iter: int = Field(10_000, ge=1, description="Largest max_iter of a job.")
    max_k: int = Field(1000, ge=1, description="Largest k (or top) in queries.")
    max_range: int = Field(2**22, ge=1, description="Most rows (W) or columns (H) in one factor download.")
    max_transform_rows: int = Field(10_000, ge=1, description="Most rows in one transform request.")
    max_rows: int = Field(50_000_000, ge=1, description="Most rows of an ingested matrix.")
    max_cols: int = Field(10_000_000, ge=1, description="Most columns of an ingested matrix.")
    max_values: int = Field(2**31, ge=1, description="Most stored values (non-zeros, or rows x cols when dense) "
                                                     "of an ingested matrix.")
    max_line_bytes: int = Field(64 * 2**20, ge=1024, description="Longest line of a CSV or label file.")
    ingest_memory_bytes: int = Field(256 * 2**20, ge=2**20,
                                     description="Memory an ingest may hold for inputs that cannot be streamed "
                                                 "by rows (unsorted .mtx entries, non-CSR sparse .npz).")
    index_memory_bytes: int = Field(4 * 2**30, ge=0, description="Memory for similarity indexes held for "
                                    "finished jobs (least recently used evicted); 0 scans W from storage per query.")
    query_workers: int | None = Field(None, ge=0, description="Query worker processes beside the service's own, "
                                      "answering similar, transform and components queries of finished jobs on the "
                                      "same port (other requests they pass to the service); none: one per core "
                                      "but one, 0: none (distnmf serve only).")
    approximate_from_rows: int = Field(200_000, ge=0, description="Rows from which similarity queries use a faiss "
                                       "index (IVF, else HNSW) instead of an exact in-memory scan.")

    @field_validator("storage_root")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        return None if value is None else str(storage.as_location(value))

    @property
    def layout(self) -> DataDir:
        """Where everything lives: under ``data_dir``, stores under ``storage_root`` if set."""
        return DataDir(self.data_dir, storage.as_location(self.storage_root) if self.storage_root else None)

    def query_worker_count(self) -> int:
        """How many query worker processes to run: ``query_workers``, else one per usable core but one
        (the cores this process may run on, within a container's CPU quota: ``dask.system.cpu_count``)."""
        if self.query_workers is not None:
            return self.query_workers
        if not hasattr(socket, "SO_REUSEPORT"):  # the processes could not share the port
            return 0
        return max(0, dask.system.cpu_count() - 1)

    def environment(self) -> dict[str, str]:
        """These settings as the ``DISTNMF_*`` variables that make a child process's ``Settings()`` equal them."""
        values = self.model_dump(mode="json", exclude_none=True, exclude={"api_token"})
        env = {f"DISTNMF_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
               for name, value in values.items()}
        if self.api_token is not None:
            env["DISTNMF_API_TOKEN"] = self.api_token.get_secret_value()
        return env

    def limit_error(self, name: str, what: str, value: int) -> str | None:
        """A message naming the limit ``name`` when ``value`` (of ``what``) exceeds it, else None."""
        limit = getattr(self, name)
        if value <= limit:
            return None
        return f"{what}={value} exceeds the limit {name}={limit} (set DISTNMF_{name.upper()} to change it)"

    def limits(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in LIMITS}

    def ingest_limits(self) -> IngestLimits:
        """The limits every ingest of the service reads its input under."""
        return IngestLimits(max_rows=self.max_rows, max_cols=self.max_cols, max_values=self.max_values,
                            max_line_bytes=self.max_line_bytes, memory_bytes=self.ingest_memory_bytes,
                            setting_prefix="DISTNMF_")
