"""Pure block kernels for NMF: numpy / scipy.sparse in, numpy out. No Dask here.

Notation for one row block: X_i of shape (m_i, n), W_i of shape (m_i, k), H of shape (k, n).
Every kernel is exact on its block; summing the per-block terms over all blocks gives the
full-matrix quantity, which is how the driver distributes the work.

Losses follow scikit-learn: the objective is ``D_beta(X, WH) + reg`` with
``reg = l1_W ||W||_1 + 0.5 l2_W ||W||_F^2 + (same for H)``, and the Frobenius divergence is
``0.5 ||X - WH||_F^2``.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import scipy.sparse as sp

EPSILON = np.finfo(np.float32).eps
Block: TypeAlias = np.ndarray | sp.csr_array | sp.csr_matrix


def beta_to_float(beta_loss: str | float) -> float:
    """Map a loss name to its beta: frobenius 2, kullback-leibler 1, itakura-saito 0."""
    names = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}
    return names[beta_loss] if isinstance(beta_loss, str) else float(beta_loss)


def mu_gamma(beta: float) -> float:
    """Exponent of the maximization-minimization step (Fevotte & Idier 2011)."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


# --------------------------------------------------------------------------- products


def stored_values(X: Block) -> np.ndarray:
    """The values a block stores, flat: all entries of a dense block, ``data`` of a sparse one."""
    return X.ravel() if isinstance(X, np.ndarray) else np.asarray(X.data)


def x_ht(X: Block, H: np.ndarray) -> np.ndarray:
    """X_i H^T of shape (m_i, k)."""
    return np.asarray(X @ H.T, dtype=np.float32)


def wt_x(W: np.ndarray, X: Block) -> np.ndarray:
    """W_i^T X_i of shape (k, n)."""
    # (Xᵀ W)ᵀ: BLAS runs this orientation about 1.5x faster than Wᵀ X on row-major X
    return np.asarray((X.T @ W).T, dtype=np.float32)


def block_stats(X: Block, chunk: int = 1 << 20) -> tuple[float, float, int]:
    """(sum of squares, sum, number of non-zero values) of a block, accumulated in float64
    over slices of ``chunk`` values, so no float64 copy of the whole block is made. The count
    is of non-zero *values*, the same for dense and sparse storage of one matrix."""
    values = stored_values(X)
    sq = total = 0.0
    nonzeros = 0
    for start in range(0, values.size, chunk):
        part = values[start:start + chunk].astype(np.float64)
        sq += float(part @ part)
        total += float(part.sum())
        nonzeros += int(np.count_nonzero(part))
    return sq, total, nonzeros


# --------------------------------------------------------------------------- HALS


def hals_sweeps(F: np.ndarray, A: np.ndarray, G: np.ndarray, *, max_sweeps: int = 1,
                inner_tol: float = 0.1, l1: float = 0.0, l2: float = 0.0) -> tuple[int, float]:
    """Accelerated HALS: up to ``max_sweeps`` column sweeps over F for fixed A and G.

    With F = W, A = X H^T, G = H H^T: minimises ``0.5 ||X - W H||^2 + l1 ||W||_1 + 0.5 l2 ||W||^2``
    over W >= 0, one column at a time (Cichocki & Phan's HALS); with F = Hᵀ, A = (Wᵀ X)ᵀ, G = Wᵀ W
    the same for H. As in Gillis & Glineur's accelerated HALS, the sweeps reuse the costly A; they
    stop once a sweep changes F by less than ``inner_tol`` times the change of the first sweep
    (``inner_tol=0``: exactly ``max_sweeps``). Compiled: :mod:`distnmf.hals_kernel`.

    Parameters
    ----------
    F : ndarray of shape (r, k), float32, updated in place (any strides: Hᵀ may be a view).
    A : ndarray of shape (r, k).
    G : ndarray of shape (k, k).

    Returns
    -------
    n_sweeps : sweeps done; violation : scikit-learn cd's projected-gradient violation (the first sweep's).
    """
    from distnmf import hals_kernel  # numba: imported (~0.5 s) by the first HALS fit, not by every import

    G = np.asarray(G, dtype=np.float32)
    if l2:
        G = G + np.float32(l2) * np.eye(len(G), dtype=np.float32)
    tol2 = inner_tol**2 if max_sweeps > 1 else 0.0
    return hals_kernel.sweep_rows(F, np.asarray(A, dtype=np.float32), np.ascontiguousarray(G), np.float32(l1),
                                  max_sweeps, tol2)


def accelerated_sweeps(n_rows: int, n_cols: int, k: int, nnz: int | None = None, alpha: float = 0.5,
                       cap: int = 10) -> int:
    """Inner sweep budget of accelerated HALS: ``1 + alpha * rho`` with rho the cost ratio.

    rho = (cost of X H^T + H H^T) / (cost of one sweep) = (nnz k + n k^2) / (m k^2 + m k),
    from Gillis & Glineur (2012), capped at ``cap``. ``nnz`` is the number of non-zero values
    (not of stored entries), so dense and sparse storage of one matrix get the same budget.
    A cap of 5 reached scikit-learn's error in fewer iterations on bench part 1b (tall 18 -> 15,
    digits 64 -> 57, the others equal) but left a 400,000-row fit from a random start, after 3
    iterations, 4e-3 apart between 49 and 2 row blocks (tests/test_out_of_core.py): with 10 the
    sweeps damp the float32 rounding of the block sums; kept at 10.
    """
    nnz = n_rows * n_cols if nnz is None else nnz
    rho = (nnz * k + n_cols * k * k) / max(1.0, n_rows * (k * k + k))
    return int(max(1, min(cap, 1 + np.floor(alpha * rho))))


def hals_update_block(X: Block, W: np.ndarray, H: np.ndarray, HHt: np.ndarray, *, max_sweeps: int,
                      l1: float = 0.0, l2: float = 0.0) -> tuple[np.ndarray, float]:
    """HALS update of one row block W_i given X_i, H and H H^T.

    Exactly ``max_sweeps`` sweeps, so the result does not depend on how rows are blocked.
    Returns the new W_i (m_i, k) and the violation of its first sweep.
    """
    W = np.array(W, dtype=np.float32, order="C", copy=True)
    _, violation = hals_sweeps(W, x_ht(X, H), HHt, max_sweeps=max_sweeps, inner_tol=0.0, l1=l1, l2=l2)
    return W, violation


def hals_update_h(H: np.ndarray, WtX: np.ndarray, WtW: np.ndarray, *, max_sweeps: int,
                  l1: float = 0.0, l2: float = 0.0) -> tuple[np.ndarray, float]:
    """HALS update of H (k, n) from the reduced W^T X (k, n) and W^T W (k, k), swept as Hᵀ.

    Returns the new H and the violation of its first sweep.
    """
    H = np.array(H, dtype=np.float32, order="C", copy=True)
    _, violation = hals_sweeps(H.T, np.asarray(WtX, dtype=np.float32).T, WtW, max_sweeps=max_sweeps, l1=l1, l2=l2)
    return H, violation


def load_compiled() -> None:
    """Load the compiled kernels into this process through the calls fits make, on a tiny problem:
    numba's start-up (its import and its code generator, ~1.5-2 s here even from the disk cache) is
    then paid before the first fit rather than by it (a Dask worker does this as it starts). In a
    fresh environment this compiles them into the disk cache (~5 s; ``make venv`` does it once)."""
    from distnmf import foldin_kernel

    X = sp.csr_array(np.eye(2, dtype=np.float32))
    W = H = np.eye(2, dtype=np.float32)
    hals_update_block(X, W, H, H @ H.T, max_sweeps=1)
    hals_update_h(H, wt_x(W, X), W.T @ W, max_sweeps=1)
    residual_sq_block(X, W, H)
    foldin_kernel.hals_fold_in(W, H @ H.T, max_sweeps=1, tol=0.1)  # fold-in: a G shared by the rows
    foldin_kernel.hals_fold_in(W, np.stack([H @ H.T] * 2), max_sweeps=1, tol=0.1)  # masked fits: one G per row


def gram64(H: np.ndarray) -> np.ndarray:
    """H H^T of shape (k, k), computed in float64."""
    H64 = H.astype(np.float64)
    return H64 @ H64.T


def frobenius_error_sq(x_sq: float, WtX: np.ndarray, WtW: np.ndarray, H: np.ndarray,
                       HHt: np.ndarray | None = None) -> float:
    """||X - W H||_F^2 = ||X||^2 - 2 <W^T X, H> + <W^T W, H H^T>, without forming W H.

    ``WtX`` (k, n) and ``WtW`` (k, k) are sums over all row blocks; computed in float64.
    ``HHt`` is :func:`gram64` of H when the caller already has it.
    """
    HHt = gram64(H) if HHt is None else HHt
    cross = float(np.einsum("ij,ij->", WtX, H, dtype=np.float64))  # float64 sums, no float64 copies (4x faster)
    quad = float(np.vdot(WtW.astype(np.float64), HHt))
    return max(x_sq - 2.0 * cross + quad, 0.0)


def residual_sq_block(X: Block, W: np.ndarray, H: np.ndarray, chunk_bytes: int = 1 << 22) -> float:
    """||X_i - W_i H||_F^2 of one block, accurate to float64 even when the residual is tiny.

    The per-iteration error from float32 W^T X and W^T W (:func:`frobenius_error_sq`) loses
    everything below ~1e-7 ||X||^2 to cancellation; this pass reports the final error exactly.
    Dense: over row slices of ``chunk_bytes`` (a task's memory stays bounded), the residual from
    a float32 product, squared and summed in float64; the float32 rounding of W H (~1e-6 of an
    entry) moves the sum by ~1e-12 ||X_s||^2, so a slice whose residual is below 1e-4 ||X_s||^2 is
    recomputed in float64. Sparse: ``||X||^2 - 2 <X, WH>_nnz + <W^T W, H H^T>`` in float64.
    """
    H64 = H.astype(np.float64)
    if not isinstance(X, np.ndarray):
        from distnmf import sparse_kernel  # numba: imported by the first fit that needs it

        X = sp.csr_array(X)
        W64 = W.astype(np.float64)
        data = np.asarray(X.data, dtype=np.float64)
        cross = sparse_kernel.stored_cross(X.indptr, X.indices, X.data, np.ascontiguousarray(W, dtype=np.float32),
                                           np.ascontiguousarray(H.T, dtype=np.float32))
        quad = float(np.vdot(W64.T @ W64, H64 @ H64.T))
        return max(float(data @ data) - 2.0 * cross + quad, 0.0)
    total = 0.0
    chunk_rows = max(1, chunk_bytes // (8 * X.shape[1]))
    for start in range(0, X.shape[0], chunk_rows):
        x, w = X[start:start + chunk_rows], W[start:start + chunk_rows]
        diff = (x - w @ H.astype(x.dtype)).astype(np.float64).ravel()
        part = float(diff @ diff)
        flat = x.ravel()
        if part < 1e-4 * float(flat @ flat):  # float32 dot: precise enough for a threshold
            diff = x.astype(np.float64) - w.astype(np.float64) @ H64
            part = float(np.vdot(diff, diff))
        total += part
    return total


# --------------------------------------------------------------------------- multiplicative updates


def _wh_at(X: Block, W: np.ndarray, H: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
    """(W H) at X's stored entries (sparse X: a vector aligned with X.data; dense: the full block)."""
    if isinstance(X, np.ndarray):
        return W @ H
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    out = np.empty(X.nnz, dtype=np.float32)
    for s in range(0, X.nnz, chunk):
        r, c = rows[s:s + chunk], X.indices[s:s + chunk]
        out[s:s + chunk] = np.einsum("ij,ji->i", W[r], H[:, c])
    return out


def _weighted_ratio(X: Block, WH: np.ndarray, beta: float) -> Block:
    """X * (W H)^(beta - 2), on X's stored entries for sparse X."""
    x_data = X if isinstance(X, np.ndarray) else np.asarray(X.data)
    WH = np.maximum(WH, EPSILON) if beta < 2 else WH
    ratio = x_data * WH ** (beta - 2.0) if beta not in (1.0, 0.0) else (
        x_data / WH if beta == 1.0 else x_data / (WH * WH))
    ratio = ratio.astype(np.float32, copy=False)
    if isinstance(X, np.ndarray):
        return ratio
    return sp.csr_array((ratio, X.indices, X.indptr), shape=X.shape)


def _dense_wh_power(W: np.ndarray, H: np.ndarray, beta: float) -> np.ndarray:
    WH = W @ H
    if beta < 1:
        WH = np.maximum(WH, EPSILON)
    return WH ** (beta - 1.0)


def mu_update_block(X: Block, W: np.ndarray, H: np.ndarray, beta: float, *, HHt: np.ndarray | None = None,
                    l1: float = 0.0, l2: float = 0.0) -> np.ndarray:
    """One multiplicative update of a row block W_i (m_i, k) for the beta-divergence, H fixed."""
    if beta == 2.0:
        numerator = x_ht(X, H)
        denominator = W @ (H @ H.T if HHt is None else HHt)
    else:
        numerator = np.asarray(_weighted_ratio(X, _wh_at(X, W, H), beta) @ H.T, dtype=np.float32)
        if beta == 1.0:
            denominator = np.broadcast_to(H.sum(axis=1), W.shape)  # _mu_step never writes into it
        else:
            denominator = _dense_wh_power(W, H, beta) @ H.T
    return _mu_step(W, numerator, denominator, beta, l1, l2)


def mu_h_terms(X: Block, W: np.ndarray, H: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-block numerator (k, n) and denominator (k, n) or (k, 1) of the H update.

    Numerator: W_i^T (X_i * (W_i H)^(beta-2)); denominator: W_i^T (W_i H)^(beta-1)
    (for beta = 1 the column sums of W_i, shape (k, 1)). Both sum over row blocks.
    For beta = 2 use :func:`wt_x` and W^T W instead.
    """
    numerator = wt_x(W, _weighted_ratio(X, _wh_at(X, W, H), beta))
    if beta == 1.0:
        denominator = W.sum(axis=0, dtype=np.float64)[:, None]
    else:
        denominator = W.T @ _dense_wh_power(W, H, beta)
    return numerator, np.asarray(denominator, dtype=np.float64)


def mu_update_h(H: np.ndarray, numerator: np.ndarray, denominator: np.ndarray, beta: float, *,
                l1: float = 0.0, l2: float = 0.0) -> np.ndarray:
    """Multiplicative update of H (k, n) from the reduced numerator and denominator."""
    return _mu_step(H, numerator, np.broadcast_to(denominator, H.shape).astype(np.float64), beta, l1, l2)


def _mu_step(M: np.ndarray, numerator: np.ndarray, denominator: np.ndarray, beta: float, l1: float,
             l2: float) -> np.ndarray:
    """``M * (numerator / (denominator + l1 + l2 M)) ** gamma``, the maximization-minimization
    step shared by the W and H updates; for beta < 1 tiny entries are set to 0 for stability."""
    if l1:
        denominator = denominator + l1
    if l2:
        denominator = denominator + l2 * M
    delta = numerator / np.where(denominator == 0, EPSILON, denominator)
    gamma = mu_gamma(beta)
    if gamma != 1:
        delta **= gamma
    M = (M * delta).astype(np.float32)
    if beta < 1:
        M[M < np.finfo(np.float64).eps] = 0.0
    return M


def beta_divergence_block(X: Block, W: np.ndarray, H: np.ndarray, beta: float) -> float:
    """Beta-divergence D_beta(X_i || W_i H) of one block (sums over blocks to the total).

    For beta = 2 this is 0.5 ||X_i - W_i H||^2. Zeros of X contribute only through the
    terms that are defined there, as in scikit-learn.
    """
    if beta == 2.0:
        x_sq = block_stats(X)[0]
        WtX = wt_x(W, X)
        return 0.5 * frobenius_error_sq(x_sq, WtX, W.T @ W, H)
    x_data = stored_values(X).astype(np.float64)
    wh = _wh_at(X, W, H)
    wh = (wh if sp.issparse(X) else wh.ravel()).astype(np.float64)
    keep = x_data > EPSILON
    x_data, wh_x = x_data[keep], np.maximum(wh[keep], EPSILON)
    if beta == 1.0:
        sum_wh = float(W.sum(axis=0, dtype=np.float64) @ H.sum(axis=1, dtype=np.float64))
        return float(x_data @ np.log(x_data / wh_x)) + sum_wh - float(x_data.sum())
    if beta == 0.0:
        div = x_data / wh_x
        return float(div.sum() - X.shape[0] * X.shape[1] - np.log(div).sum())
    full = (W @ H).astype(np.float64)
    sum_wh_beta = float((full ** beta).sum())
    res = float((x_data ** beta).sum()) - beta * float(x_data @ wh_x ** (beta - 1))
    res += sum_wh_beta * (beta - 1)
    return res / (beta * (beta - 1))
