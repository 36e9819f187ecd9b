"""Should distnmf use dask-ml? Its TruncatedSVD against distnmf.init.truncated_svd, side by side.

dask-ml is not a dependency (see the README's "Dependencies"); run with it added for the run:

    .venv/bin/uv run --with dask-ml==2025.1.0 python bench/dask_ml_svd.py

Both run on the same LocalCluster (2 workers x 1 thread) on the same tall float32 matrices read
from the same Zarr store (distnmf reads its row blocks, dask-ml gets ``Matrix.dask``); each is
timed best of 3 after a warm-up, and checked against
the exact singular values of the matrix (relative error of the top-k values). dask-ml runs on a
float64 copy: on float32 its power iterations (no re-orthonormalization) overflow; the run
says whether they did.
"""

from __future__ import annotations

import time

import numpy as np


def _best(fn, repeats: int = 3) -> tuple[float, object]:
    fn()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(folder: str = "/tmp/distnmf-dask-ml-svd") -> None:
    from dask_ml.decomposition import TruncatedSVD
    from distributed import Client, LocalCluster

    from distnmf.init import truncated_svd
    from distnmf.matrixwriter import save_matrix

    rng = np.random.default_rng(0)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        print(f"{'matrix':>22} {'k':>3} {'distnmf s':>9} {'dask-ml s':>9} {'ratio':>6} "
              f"{'distnmf err':>11} {'dask-ml err':>11} (dask-ml in float64)")
        for m, n, k in ((200_000, 400, 20), (100_000, 2_000, 50)):
            # low rank plus noise: a spectrum with a gap, like real data
            X = (rng.random((m, 3 * k), dtype=np.float32) @ rng.random((3 * k, n), dtype=np.float32)
                 + rng.random((m, n), dtype=np.float32))
            exact = np.linalg.svd(X.T @ X.astype(np.float64), compute_uv=False)[:k] ** 0.5
            matrix = save_matrix(X, f"{folder}/{m}x{n}.zarr", overwrite=True)
            ours, (_, s_ours, _) = _best(lambda: truncated_svd(matrix, k, random_state=0))
            dX = matrix.dask
            model = TruncatedSVD(n_components=k, algorithm="randomized", random_state=0)  # its default n_iter=5
            try:
                model.fit(dX)
                float32 = "ok"
            except np.linalg.LinAlgError as exc:  # power iterations without re-orthonormalization overflow
                float32 = f"fails ({exc})"
            theirs, fitted = _best(lambda: model.fit(dX.astype(np.float64)))
            err = [float(np.max(np.abs(s - exact) / exact)) for s in (s_ours, fitted.singular_values_)]
            print(f"{m:>10,} x {n:>9,} {k:>3} {ours:9.2f} {theirs:9.2f} {theirs / ours:6.2f} "
                  f"{err[0]:11.2e} {err[1]:11.2e}   dask-ml on float32: {float32}")


if __name__ == "__main__":
    main()
