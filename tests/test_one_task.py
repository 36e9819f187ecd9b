"""The rule that decides when a service job runs as one task on one worker."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

import distnmf
from distnmf.one_task import MAX_WORK, fit_memory, fits_one_task
from distnmf.dask_context import Capacity

GiB = 2**30


def test_small_fits_run_as_one_task_large_or_heavy_ones_block_parallel(tmp_path) -> None:
    sparse = distnmf.save_matrix(sp.random_array((2000, 300), density=0.05, random_state=0, dtype=np.float32),
                                 tmp_path / "sparse.zarr")
    dense = distnmf.save_matrix(np.random.default_rng(0).random((2000, 300), dtype=np.float32), tmp_path / "dense.zarr")
    two_workers = Capacity(workers=2, threads=2, memory=4 * GiB, task_memory=1 * GiB)
    assert fits_one_task(sparse, 10, two_workers) and fits_one_task(dense, 10, two_workers)
    # the memory need grows with X and with W and H (k (m + n)), and must fit one task's budget
    assert fit_memory(dense, 10) > fit_memory(sparse, 10) and fit_memory(dense, 50) > fit_memory(dense, 10)
    tight = Capacity(workers=2, threads=2, memory=4 * GiB, task_memory=fit_memory(dense, 10) - 1)
    assert fits_one_task(sparse, 10, tight) and not fits_one_task(dense, 10, tight)
    # heavy iterations are spread over the workers, unless there is one thread anyway or "always"
    heavy_k = int(MAX_WORK // dense.nnz) + 1
    roomy = Capacity(workers=2, threads=2, memory=64 * GiB, task_memory=32 * GiB)
    assert not fits_one_task(dense, heavy_k, roomy)
    assert fits_one_task(dense, heavy_k, roomy, any_work=True)
    assert fits_one_task(dense, heavy_k, Capacity(workers=1, threads=1, memory=64 * GiB, task_memory=32 * GiB))
    assert not fits_one_task(sparse, 10, Capacity(workers=0, threads=0, memory=0, task_memory=1 * GiB))
