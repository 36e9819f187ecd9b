"""Fold-in: the coefficients W of rows X (m, n) with H (k, n) fixed, in memory or over row blocks.

Every row is its own non-negative least-squares problem, solved alone: its own flat start and its
own stopping test (:mod:`distnmf.foldin_kernel` for HALS; multiplicative updates, for other beta
losses, stop row by row too), so a row's coefficients do not depend on which rows were folded in
with it — one at a time, in a batch, or in any block split. Penalties arrive scaled as scikit-learn's
``transform`` applies them (``distnmf.estimator.compute_regularization`` with n_features). Also W's
output: gathered here, or written to Zarr.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr

from distnmf import inputs, kernels, masked
from distnmf.checkpoint import write_w
from distnmf.dask_context import active_client
from distnmf.runner import Runner, make_runner
from distnmf.source import BlockSource, as_source, materialize
from distnmf.storage import Location, atomic_path
from distnmf.validation import check_block


def fold_in_block(block: kernels.Block, Ht: np.ndarray, HHt: np.ndarray, beta: float, solver: str,
                  max_iter: int, tol: float, l1: float, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients W (m, k) float32 of an in-memory block (m, n) given Hᵀ (n, k) C-contiguous (a sparse
    block times a transposed view would copy H each time: 50 µs for a one-row query) and H Hᵀ (k, k);
    and the sweeps each row took (m,)."""
    from distnmf import foldin_kernel  # numba: imported (~0.5 s) by the first fold-in, not by every fit

    B = np.asarray(block @ Ht, dtype=np.float32)
    if l1:
        B -= l1
    G = HHt + l2 * np.eye(len(HHt), dtype=HHt.dtype) if l2 else HHt
    if solver == "hals":
        return foldin_kernel.hals_fold_in(B, G, max_sweeps=max_iter, tol=tol)
    return _mu_fold_in(block, Ht.T, HHt, foldin_kernel.flat_starts(B, G), beta, max_iter, tol, l1, l2)


def _mu_fold_in(block: kernels.Block, H: np.ndarray, HHt: np.ndarray, starts: np.ndarray, beta: float,
                max_iter: int, tol: float, l1: float, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicative updates from each row's flat start; a row stops once an update changes it by at
    most ``tol`` times its norm."""
    W = np.repeat(starts.astype(np.float32)[:, None], H.shape[0], axis=1)
    sweeps = np.zeros(len(W), dtype=np.int64)
    active = np.arange(len(W))
    for n_iter in range(1, max_iter + 1):
        rows = block if len(active) == len(W) else block[active]
        new = kernels.mu_update_block(rows, W[active], H, beta, HHt=HHt if beta == 2.0 else None, l1=l1, l2=l2)
        change = np.linalg.norm(new - W[active], axis=1)
        W[active], sweeps[active] = new, n_iter
        active = active[change > tol * np.maximum(np.linalg.norm(new, axis=1), 1e-12)]
        if not active.size:
            break
    return W, sweeps


def fold_in_task(x: Any, start: int, H: np.ndarray, HHt: np.ndarray, beta: float, solver: str, max_iter: int,
                 tol: float, l1: float, l2: float) -> tuple[np.ndarray, int]:
    """Validate one row block (its first row is ``start``) and fold it in: W_i (m_i, k) and the sweeps
    of its slowest row."""
    block = materialize(x)
    check_block(block, start)
    W, sweeps = fold_in_block(block, np.ascontiguousarray(H.T), HHt, beta, solver, max_iter, tol, l1, l2)
    return W, int(sweeps.max(initial=0))


@dataclass(frozen=True, eq=False)  # compared by identity: H is an array
class FoldIn:
    """Folding new rows in against one fixed H (k, n) float32, with a loss, a solver and W's penalties
    ``l1``, ``l2`` already scaled (``distnmf.functional.make_fold_in`` builds a validated one).

    H H^T is computed once per object (a served job keeps one: ``Factors.fold_in``). Calling it on
    rows X_new (r, n) returns W (r, k) float32: a few in-memory rows (a query) are solved in this
    thread, anything else over row blocks on the runner (Dask when a client is active).
    """

    H: np.ndarray
    beta: float = 2.0
    solver: str = "hals"
    max_iter: int = 200
    tol: float = 1e-4
    l1: float = 0.0
    l2: float = 0.0
    missing: str = "zero"

    @cached_property
    def HHt(self) -> np.ndarray:
        """H Hᵀ of shape (k, k)."""
        return self.H @ self.H.T

    @cached_property
    def Ht(self) -> np.ndarray:
        """Hᵀ of shape (n, k), C-contiguous."""
        return np.ascontiguousarray(self.H.T)

    def prepare(self) -> FoldIn:
        """Compute H Hᵀ and Hᵀ, and load (or compile) the kernel this fold-in uses by folding a zero row
        in, so the first query pays for none of it (~1 s: numba's import and cached code)."""
        self.HHt, self.Ht  # noqa: B018 - cached properties, computed now
        if self.missing == "zero":  # (unobserved entries fold in on a runner, never in a query's thread)
            self.rows(np.zeros((1, self.H.shape[1]), dtype=np.float32))
        return self

    def __call__(self, X_new: Any) -> np.ndarray:
        if self.missing == "zero" and folds_here(X_new):
            return self.rows(X_new)[0]  # a few rows (a query): no runner to set up
        runner = make_runner()
        try:
            source = as_source(X_new, n_blocks_hint=inputs.blocks_hint(runner, X_new))
            self._check_columns(source.shape[1])
            results = transform_blocks(runner, source, self.H, self.beta, self.solver, self.max_iter, self.tol,
                                       self.l1, self.l2, self.missing, HHt=self.HHt)
            return np.concatenate(runner.gather(runner.select(results, 0, "nmf-fold-in-W")))
        finally:
            runner.close()

    def rows(self, X_new: np.ndarray | sp.sparray | sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
        """W (r, k) float32 of in-memory rows X_new (r, n), validated, in this thread, and the sweeps
        each row took (r,)."""
        block = X_new if isinstance(X_new, sp.csr_array) or not sp.issparse(X_new) else sp.csr_array(X_new)
        block = np.atleast_2d(block) if isinstance(block, np.ndarray) else block
        self._check_columns(block.shape[1])
        check_block(block)
        return fold_in_block(block, self.Ht, self.HHt, self.beta, self.solver, self.max_iter, self.tol,
                             self.l1, self.l2)

    def _check_columns(self, n_cols: int) -> None:
        if n_cols != self.H.shape[1]:
            raise ValueError(f"X_new has {n_cols} columns but H has {self.H.shape[1]}")


def folds_here(X: Any) -> bool:
    """Whether rows X are few enough to fold in in this thread (numpy or scipy.sparse under
    ``inputs.SMALL_INPUT_BYTES``, no Dask client active) rather than over row blocks on a runner."""
    return (sp.issparse(X) or isinstance(X, np.ndarray)) and active_client() is None \
        and (X.nnz * 8 if sp.issparse(X) else X.nbytes) < inputs.SMALL_INPUT_BYTES


def transform_blocks(runner: Runner, source: BlockSource, H: np.ndarray, beta: float, solver: str,
                     max_iter: int, tol: float, l1: float = 0.0, l2: float = 0.0,
                     missing: str = "zero", HHt: np.ndarray | None = None) -> list[Any]:
    """Fold-in over X's row blocks for fixed H (k, n) with W's penalties ``l1``, ``l2`` (scaled by
    n_features): per-block handles of (W_i, sweeps of its slowest row); each block is validated by its
    task. ``missing="unobserved"``: each row's problem is over its observed entries only, its
    penalties scaled by its observed entries."""
    H = np.asarray(H, dtype=np.float32)
    HHt = H @ H.T if HHt is None else HHt
    x_handles = runner.load(source, keep=False)
    starts = list(source.bounds[:-1])
    if missing == "unobserved":
        n = source.shape[1]
        return runner.map("nmf-fold-in", _masked_fold_in_task, x_handles, starts,
                          shared=(runner.broadcast(H), HHt, max_iter, tol, l1 / n, l2 / n))
    return runner.map("nmf-fold-in", fold_in_task, x_handles, starts,
                      shared=(runner.broadcast(H), HHt, beta, solver, max_iter, tol, l1, l2))


def _masked_fold_in_task(x: Any, start: int, H: np.ndarray, HHt: np.ndarray, max_iter: int, tol: float,
                         l1: float, l2: float) -> tuple[np.ndarray, int]:
    block = materialize(x)
    check_block(block, start, allow_nan=not sp.issparse(block))
    return masked.fold_in_rows(masked.masked_block(block, None, start), H, HHt, max_sweeps=max_iter, tol=tol,
                               l1=l1, l2=l2)


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
