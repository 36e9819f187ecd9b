"""Fold-in: the coefficients W of rows X (m, n) with H (k, n) fixed, over row blocks.

Each block solves its rows' non-negative least squares (HALS, or multiplicative updates for
other beta losses) to convergence from the flat start ``sqrt(mean(X) / k)`` taken over all of X,
so a row's answer does not depend on the block split. Penalties arrive scaled (see
``distnmf.estimator.compute_regularization``). Also W's output: gathered here, or written to Zarr.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import zarr

from distnmf import kernels, masked
from distnmf.checkpoint import write_w
from distnmf.runner import Runner
from distnmf.solvers import masked_stats_task, stats_task
from distnmf.source import BlockSource, materialize
from distnmf.storage import Location, atomic_path


def fold_in_task(x: Any, H: np.ndarray, HHt: np.ndarray, avg: float, beta: float, solver: str,
                 max_iter: int, tol: float, l1: float, l2: float) -> tuple[np.ndarray, int]:
    """Coefficients of one block with H fixed from the flat start ``avg``: W_i (m_i, k) and the
    number of sweeps (iterations) done."""
    block = materialize(x)
    W = np.full((block.shape[0], H.shape[0]), avg, dtype=np.float32)
    if solver == "hals":
        XHt = kernels.x_ht(block, H)
        if l1:
            XHt -= l1
        if l2:
            HHt = HHt + l2 * np.eye(len(HHt), dtype=HHt.dtype)
        return kernels.hals_fold_in(W, XHt, HHt, max_sweeps=max_iter, tol=tol)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        previous = W
        W = kernels.mu_update_block(block, W, H, beta, HHt=HHt if beta == 2.0 else None, l1=l1, l2=l2)
        change = np.linalg.norm(W - previous)
        if change <= tol * max(float(np.linalg.norm(W)), 1e-12):
            break
    return W, n_iter


def flat_start(shape: tuple[int, int], x_sum: float, k: int) -> float:
    """scikit-learn's flat start ``sqrt(mean(X) / k)`` of X (m, n) whose entries sum to ``x_sum``."""
    m, n = shape
    return float(np.sqrt(max(x_sum, 0.0) / (m * n) / k))


def fold_in_inline(X: Any, H: np.ndarray, beta: float, solver: str, max_iter: int, tol: float, l1: float,
                 l2: float) -> np.ndarray:
    """W (r, k) of a few in-memory rows X (r, n), in this thread (a query: no runner to set up)."""
    avg = flat_start(X.shape, stats_task(X, 0)[1], H.shape[0])
    return fold_in_task(X, H, H @ H.T, avg, beta, solver, max_iter, tol, l1, l2)[0]


def transform_blocks(runner: Runner, source: BlockSource, H: np.ndarray, beta: float, solver: str,
                     max_iter: int, tol: float, l1: float = 0.0, l2: float = 0.0,
                     missing: str = "zero") -> list[Any]:
    """Fold-in over X's row blocks for fixed H (k, n) with W's penalties ``l1``, ``l2`` (scaled by
    n_features): per-block handles of (W_i, sweeps done). ``missing="unobserved"``: each row's
    problem is over its observed entries only, its penalties scaled by its observed entries."""
    H = np.asarray(H, dtype=np.float32)
    x_handles = runner.load(source, keep=False)
    starts = list(source.bounds[:-1])
    if missing == "unobserved":
        stats = runner.map("nmf-check-X", masked_stats_task, x_handles, [None] * len(x_handles), starts)
        _, x_sum, n_observed, _ = runner.reduce(stats, "nmf-reduce-stats")
        avg = float(np.sqrt(max(x_sum, 0.0) / n_observed / H.shape[0]))
        n = source.shape[1]
        return runner.map("nmf-fold-in", _masked_fold_in_task, x_handles, starts,
                          shared=(runner.broadcast(H), H @ H.T, avg, max_iter, tol, l1 / n, l2 / n))
    x_sum = runner.reduce(runner.map("nmf-check-X", stats_task, x_handles, starts), "nmf-reduce-stats")[1]
    avg = flat_start(source.shape, x_sum, H.shape[0])
    return runner.map("nmf-fold-in", fold_in_task, x_handles,
                      shared=(runner.broadcast(H), H @ H.T, avg, beta, solver, max_iter, tol, l1, l2))


def _masked_fold_in_task(x: Any, start: int, H: np.ndarray, HHt: np.ndarray, avg: float, max_iter: int, tol: float,
                         l1: float, l2: float) -> tuple[np.ndarray, int]:
    return masked.fold_in_rows(masked.masked_block(materialize(x), None, start), H, HHt, avg, max_sweeps=max_iter,
                               tol=tol, l1=l1, l2=l2)


def output_w(runner: Runner, w_handles: list[Any], source: BlockSource, dtype: np.dtype, k: int,
             path: Location | None) -> np.ndarray | da.Array:
    """W (m, k) from its per-block handles: a numpy array of ``dtype`` when ``path`` is None,
    else written to a new Zarr group at ``path`` (array ``W``) and returned as a Dask array on it."""
    if path is None:
        return np.concatenate(runner.gather(w_handles)).astype(dtype, copy=False)
    write_w_store(runner, w_handles, source.bounds, path, k)
    return da.from_zarr(str(path), component="W")


def write_w_store(runner: Runner, w_handles: list[Any], bounds: tuple[int, ...], path: Location, k: int) -> None:
    """Write W blocks to a new Zarr group at ``path`` (array ``W``), atomically."""
    with atomic_path(path, overwrite=True) as tmp:
        zarr.open_group(tmp, mode="w", zarr_format=3)
        write_w(runner, w_handles, bounds, tmp, k)
