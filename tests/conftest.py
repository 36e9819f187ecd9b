"""Shared fixtures: a real 2-worker LocalCluster on loopback, and scratch directories."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[object]:
    """A real ``distributed.LocalCluster``: 2 worker processes, 1 thread each, on 127.0.0.1."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", memory_limit="2GiB")
    yield cluster
    cluster.close()


@pytest.fixture
def dask_client(dask_cluster) -> Iterator[object]:
    """A ``distributed.Client`` on the shared cluster, set as the default scheduler for the test."""
    from distributed import Client

    with Client(dask_cluster, set_as_default=True) as client:
        yield client
