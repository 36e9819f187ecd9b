"""Every kind of input becomes row blocks readable where the tasks run."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp

import distnmf
from distnmf.source import as_source


def _low_rank(sparse: bool) -> np.ndarray:
    rng = np.random.default_rng(4)
    X = (rng.random((300, 3)) @ rng.random((3, 40))).astype(np.float32)
    if sparse:
        X[X < np.median(X)] = 0
    return X


@pytest.mark.parametrize(("sparse", "keep"), [(False, True), (False, False), (True, True)])
def test_persisted_dask_array_fits_like_numpy(dask_client, keep, sparse):
    """A Dask array persisted on the cluster (its graph holds futures, which no synchronous
    scheduler can compute) fits on that cluster, with its blocks kept in memory or re-read per
    iteration, and gives the factors of the same fit of the numpy array."""
    X = _low_rank(sparse)
    persisted = da.from_array(sp.csr_array(X) if sparse else X, chunks=(70, 20)).persist()  # row and column chunks
    reference = distnmf.NMF(3, max_iter=4, tol=0, random_state=0, W_store=None).fit(X)
    model = distnmf.NMF(3, max_iter=4, tol=0, random_state=0, keep_in_memory=keep).fit(persisted)
    np.testing.assert_allclose(model.components_, reference.components_, rtol=2e-3, atol=1e-4)


def test_persisted_dask_array_rows_read_in_the_client_process(dask_client):
    """Outside any task (the in-process runner's threads), rows come through the futures' client."""
    X = _low_rank(sparse=False)
    source = as_source(da.from_array(X, chunks=(70, 40)).persist())
    np.testing.assert_array_equal(source.reader(65, 150), X[65:150])
