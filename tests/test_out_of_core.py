"""Out of core: a store several times larger than the cluster's memory limit factorizes."""

from __future__ import annotations

import numpy as np
import pytest

import distnmf

WORKER_MEMORY = 300 * 2**20


@pytest.fixture(scope="module")
def small_memory_cluster():
    """2 worker processes with 300 MiB each: 600 MiB of cluster memory in all."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", memory_limit=WORKER_MEMORY)
    yield cluster
    cluster.close()


def test_store_larger_than_cluster_memory(small_memory_cluster, tmp_path):
    from distributed import Client

    n_rows, n_cols, k = 400_000, 1024, 4  # 1.6 GB of float32: 2.7x the cluster's memory limit
    rng = np.random.default_rng(0)
    H0 = rng.random((k, n_cols), dtype=np.float32)
    with distnmf.MatrixWriter(tmp_path / "big.zarr", n_cols=n_cols, chunk_rows=8192) as writer:
        for start in range(0, n_rows, 50_000):
            block_rng = np.random.default_rng(start)
            W0 = block_rng.random((50_000, k), dtype=np.float32)
            writer.append(W0 @ H0 + 0.01 * block_rng.random((50_000, n_cols), dtype=np.float32))
    store = writer.matrix
    assert store.nbytes > 2.5 * 2 * WORKER_MEMORY

    params = dict(n_components=k, init="random", max_iter=3, tol=0, random_state=0)
    with Client(small_memory_cluster) as client:
        pids_before = client.run(lambda: __import__("os").getpid())
        model = distnmf.NMF(W_store=tmp_path / "W.zarr", **params)
        W = model.fit_transform(store)
        pids_after = client.run(lambda: __import__("os").getpid())
    assert pids_before == pids_after, "a worker was restarted"
    assert W.shape == (n_rows, k) and (tmp_path / "W.zarr").exists()

    reference = distnmf.NMF(**params)
    W_reference = reference.fit_transform(store.to_memory())
    H = reference.components_
    np.testing.assert_allclose(model.components_, H, rtol=1e-3, atol=1e-4 * H.max())
    for start in (0, 123_456, n_rows - 1000):
        np.testing.assert_allclose(W[start:start + 1000].compute(), W_reference[start:start + 1000],
                                   rtol=1e-3, atol=1e-4 * W_reference.max())
