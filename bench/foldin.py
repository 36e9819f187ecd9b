"""Fold-in cost: the compiled per-row kernel against the same per-row HALS in numpy, and one row at a
time against a batch (what folding concurrent requests in together would save).

    python bench/foldin.py [--factors data/bench/serving/factors/bench-serving.zarr]

H is the stored job's (``--factors``, e.g. the serving benchmark's 20 x 5,000) or, without it, a
20 x 5,000 H of Gamma(0.3) entries at 30% density. Rows are sparse (6 values at random columns, as
a tag list) or dense (W H plus noise). Both implementations solve every row alone from its own flat
start with the same stopping rule, so their answers agree to float32 rounding (reported).

1. Kernel only, on precomputed B = X Hᵀ: ``foldin_kernel.hals_fold_in`` (numba) against
   :func:`numpy_rows` (numpy over rows, one active mask per sweep) on 1, 32 and 10,000 rows.
2. ``FoldIn`` end to end (validation, X Hᵀ, kernel) on a sparse row, and 32 rows one by one
   against one batch; with ``--factors`` also ``analysis.transform`` with the 10 nearest rows from
   the job's similarity index (the service's transform), one by one against a batch.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from distnmf import foldin_kernel
from distnmf.functional import make_fold_in


def numpy_rows(B: np.ndarray, G: np.ndarray, max_sweeps: int, tol: float) -> np.ndarray:
    """The kernel's per-row HALS in numpy: W (m, k) from each row's flat start; rows leave the active
    set once a sweep changes them by at most ``tol`` times their first sweep's change."""
    m, k = B.shape
    starts = np.maximum(B.sum(axis=1, dtype=np.float64), 0) / G.sum(dtype=np.float64)
    Wt = np.repeat(starts[None, :].astype(np.float32), k, axis=0)  # (k, m): a column update reads a row
    A = np.ascontiguousarray(B.T)
    active = np.arange(m)
    first = np.zeros(0)
    for sweep in range(1, max_sweeps + 1):
        F, Aa = Wt[:, active], A[:, active]
        before = F.copy()
        for j in range(k):
            if G[j, j] > 0:
                F[j] = np.maximum(F[j] + (Aa[j] - G[j] @ F) / G[j, j], 0.0)
        Wt[:, active] = F
        change = ((F - before) ** 2).sum(axis=0)
        still = change > 0 if sweep == 1 else change > tol**2 * first
        first = change[still] if sweep == 1 else first[still]
        active = active[still]
        if not active.size:
            break
    return np.ascontiguousarray(Wt.T)


def per_call(fn: Callable[[], Any], budget_s: float = 1.0) -> float:
    """Median seconds of one call over repeats filling about ``budget_s``."""
    fn()
    started = time.perf_counter()
    fn()
    once = max(time.perf_counter() - started, 1e-7)
    times = []
    for _ in range(max(3, min(2000, int(budget_s / once)))):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def problem(factors: Path | None, seed: int = 0) -> tuple[np.ndarray, Any]:
    rng = np.random.default_rng(seed)
    if factors is not None:
        from distnmf.factors import open_factors

        opened = open_factors(factors)
        return np.asarray(opened.H, dtype=np.float32), opened
    H = (rng.gamma(0.3, size=(20, 5000)) * (rng.random((20, 5000)) < 0.3)).astype(np.float32)
    return H, None


def sparse_rows(m: int, n: int, rng: np.random.Generator) -> sp.csr_array:
    indices = np.sort(np.stack([rng.choice(n, 6, replace=False) for _ in range(m)]), axis=1).ravel()
    return sp.csr_array((np.ones(6 * m, dtype=np.float32), indices, np.arange(0, 6 * m + 1, 6)), shape=(m, n))


def dense_rows(m: int, H: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    X = rng.gamma(0.5, size=(m, len(H))).astype(np.float32) @ H
    return X + rng.random(X.shape, dtype=np.float32) * 0.1 * float(X.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=Path, default=None, help="a stored job's factors (its H, its index)")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    H, factors = problem(args.factors)
    k, n = H.shape
    fold = make_fold_in(H).prepare()
    G, Ht = fold.HHt, fold.Ht
    print(f"H {k} x {n}; max_sweeps 200, tol 1e-4")
    print("1. kernel only (B = X Hᵀ given): compiled vs numpy, per call")
    for kind in ("sparse", "dense"):
        for m in (1, 32, 10_000):
            if kind == "sparse":
                B = np.asarray(sparse_rows(m, n, rng) @ Ht, dtype=np.float32)
            else:  # 10,000 dense rows are made 1,000 at a time: only B is kept
                B = np.concatenate([dense_rows(min(1000, m), H, rng) @ Ht for _ in range(max(1, m // 1000))])
            compiled = per_call(lambda B=B: foldin_kernel.hals_fold_in(B, G, max_sweeps=200, tol=1e-4))
            plain = per_call(lambda B=B: numpy_rows(B, G, 200, 1e-4))
            W = foldin_kernel.hals_fold_in(B, G, max_sweeps=200, tol=1e-4)[0]
            gap = float(np.abs(W - numpy_rows(B, G, 200, 1e-4)).max() / max(float(W.max()), 1e-12))
            print(f"   {kind:6s} {m:6,d} rows: compiled {compiled * 1e3:9.3f} ms  numpy {plain * 1e3:9.3f} ms  "
                  f"({plain / compiled:6.1f}x)  largest difference {gap:.1e} of max W")
    print("2. end to end (validation, X Hᵀ, kernel)")
    row = sparse_rows(1, n, rng)
    print(f"   one sparse row: {per_call(lambda: fold(row)) * 1e6:7.1f} µs")
    rows = sparse_rows(32, n, rng)
    singles = [rows[[i]] for i in range(32)]
    alone = per_call(lambda: [fold(r) for r in singles])
    together = per_call(lambda: fold(rows))
    print(f"   32 sparse rows: one by one {alone * 1e3:.3f} ms, one batch {together * 1e3:.3f} ms")
    if factors is not None:
        from distnmf import analysis
        from distnmf.index import IndexCache

        cache = IndexCache()
        analysis.transform(factors, rows, similar_k=10, cache=cache)  # loads the index
        alone = per_call(lambda: [analysis.transform(factors, r, similar_k=10, cache=cache) for r in singles])
        together = per_call(lambda: analysis.transform(factors, rows, similar_k=10, cache=cache))
        print(f"   analysis.transform with 10 nearest, 32 rows: one by one {alone / 32 * 1e6:.0f} µs a row, "
              f"one batch {together / 32 * 1e6:.0f} µs a row")


if __name__ == "__main__":
    main()
