"""Weak scaling of one NMF iteration: 1 worker process on m rows vs 2 worker processes on 2m rows.

The matrix is scikit-learn's ``make_low_rank_matrix`` (absolute values, plus 1% uniform noise),
stored with ``save_matrix``; rows per worker are fixed, so an ideal weak scaling keeps the time
per iteration constant. Each configuration runs on its own ``LocalCluster(n_workers=w,
threads_per_worker=1)``, X kept in worker memory (the default when it fits), HALS, ``tol=0``;
the time per iteration is the median gap between consecutive callback calls after the first two
iterations. Configurations alternate ``--repeats`` times.

    .venv/bin/python bench/weak_scaling.py --rows-per-worker 100000 --cols 1000 -k 20

On a 2-core machine, 2 workers use both cores: the 2-worker case also competes with the driver
(H update, the reduce) and anything else running, which the load averages recorded show.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def seconds_per_iteration(path: Path, n_workers: int, k: int, n_iter: int) -> float:
    from distributed import Client, LocalCluster

    import distnmf

    stamps: list[float] = []
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster):
        distnmf.NMF(k, init="random", tol=0, max_iter=n_iter, random_state=0,
                    callback=lambda it, err, elapsed: stamps.append(time.perf_counter())).fit(path)
    return statistics.median(np.diff(stamps[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-worker", type=int, default=100_000)
    parser.add_argument("--cols", type=int, default=1000)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from sklearn.datasets import make_low_rank_matrix

    from distnmf.matrixwriter import save_matrix

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = {}
        for workers in (1, 2):
            m = workers * args.rows_per_worker
            X = np.abs(make_low_rank_matrix(m, args.cols, effective_rank=40, random_state=workers)).astype(np.float32)
            X += 0.01 * X.mean() * rng.random(X.shape, dtype=np.float32)
            paths[workers] = save_matrix(X, Path(folder) / f"X{workers}.zarr").path
            del X
        load = [os.getloadavg()[0]]
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.repeats):
            for workers in (1, 2):
                times[workers].append(seconds_per_iteration(paths[workers], workers, args.k, args.iterations))
        load.append(os.getloadavg()[0])
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    print(json.dumps({
        "rows_per_worker": args.rows_per_worker, "cols": args.cols, "k": args.k,
        "s_per_iteration": {"1 worker, m rows": t1, "2 workers, 2m rows": t2},
        "weak_scaling_efficiency_t1_over_t2": t1 / t2, "all": times,
        "load_average_start_end": load, "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
