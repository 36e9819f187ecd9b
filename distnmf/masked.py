"""Pure block kernels for NMF with missing entries: numpy / scipy.sparse in, numpy out. No Dask.

The loss is over the observed entries only, optionally weighted::

    0.5 Σ_{(r, j) observed} c_rj (x_rj - w_r · h_j)²  + penalties

Given H, each row w_r of W solves its own non-negative least-squares problem with the normal
equations ``G_r w_r = b_r``, ``G_r = Σ_j c_rj h_j h_jᵀ`` (k, k) and ``b_r = Σ_j c_rj x_rj h_j``
over the row's observed columns; the same holds for the columns h_j of H given W. The
solver is HALS (coordinate descent) on every row's normal equations at once, so with no
missing entry it is exactly the ordinary HALS of :mod:`distnmf.kernels`.

One pass per iteration: block i updates W_i, then returns its share of every column's normal
equations, ``Σ_{r in block} c_rj w_r w_rᵀ`` (n, k, k) and ``Σ_r c_rj x_rj w_r`` (n, k);
the sums over blocks are H's normal equations, and give the loss after the H update.

A block comes in one of two forms (:class:`MaskedBlock`):

- *observed*: CSR of the observed entries (explicit zeros kept) and CSR weights on the same
  pattern (sparse input with ``missing="unobserved"``, or weighted dense input);
- *dense*: X with missing entries set to 0 and a CSR indicator of the missing entries, so the
  Gram matrices are the full ``H Hᵀ`` minus the few missing terms (dense input with NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from distnmf.kernels import Block


@dataclass(frozen=True)
class MaskedBlock:
    """The observed entries of a row block X_i of shape (m_i, n); see the module docstring.

    Attributes
    ----------
    values : CSR of the observed values (observed form) or dense ndarray with 0 where missing.
    weights : CSR of entry weights on ``values``' pattern (observed form), else None.
    missing : CSR indicator of the missing entries (dense form), else None.
    """

    values: np.ndarray | sp.csr_array
    weights: sp.csr_array | None = None
    missing: sp.csr_array | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape

    @property
    def is_dense(self) -> bool:
        return self.weights is None

    def dense_form(self) -> tuple[np.ndarray, sp.csr_array]:
        """(X with 0 where missing, the CSR indicator of the missing entries); dense form only."""
        assert isinstance(self.values, np.ndarray) and self.missing is not None
        return self.values, self.missing

    def observed_form(self) -> tuple[sp.csr_array, sp.csr_array]:
        """(CSR of the observed values, CSR of their weights); observed form only."""
        assert not isinstance(self.values, np.ndarray) and self.weights is not None
        return self.values, self.weights

    def weighted_values(self) -> np.ndarray | sp.csr_array:
        """c ∘ X on the observed entries (X itself in the dense form)."""
        if self.is_dense:
            return self.values
        values, weights = self.observed_form()
        return sp.csr_array((values.data * weights.data, values.indices, values.indptr), shape=self.shape)

    def row_counts(self) -> np.ndarray:
        """Observed entries (with a positive weight) per row, shape (m_i,)."""
        if self.is_dense:
            return self.shape[1] - np.diff(self.dense_form()[1].indptr)
        weights = self.observed_form()[1]
        positive = np.r_[0, np.cumsum(weights.data > 0)]
        return np.diff(positive[weights.indptr])

    def column_counts(self) -> np.ndarray:
        """Observed entries (with a positive weight) per column, shape (n,), float64."""
        if self.is_dense:
            missing = self.dense_form()[1]
            return self.shape[0] - np.bincount(missing.indices, minlength=self.shape[1]).astype(np.float64)
        weights = self.observed_form()[1]
        return np.bincount(weights.indices[weights.data > 0], minlength=self.shape[1]).astype(np.float64)


def masked_block(X: Block, weights: Block | None = None, row_offset: int = 0) -> MaskedBlock:
    """Build the :class:`MaskedBlock` of a float32 block: sparse X's stored entries are the
    observed ones; dense X's NaN entries are missing. ``weights`` has X's shape (dense) or
    X's stored entries (sparse)."""
    if sp.issparse(X):
        X = sp.csr_array(X)
        if weights is None:
            w = np.ones_like(X.data)
        else:
            stored = sp.csr_array(weights)
            if not (np.array_equal(stored.indptr, X.indptr) and np.array_equal(stored.indices, X.indices)):
                raise ValueError(f"entry_weights must store exactly X's entries (row block starting at row "
                                 f"{row_offset}); store a weight for every rating and nothing else")
            w = np.asarray(stored.data, dtype=np.float32)
        return MaskedBlock(X, sp.csr_array((w, X.indices, X.indptr), shape=X.shape))
    X = np.asarray(X)
    nan = np.isnan(X)
    if weights is None:
        filled = np.where(nan, np.float32(0), X) if nan.any() else X
        return MaskedBlock(filled, missing=sp.csr_array(nan.astype(np.float32)))
    observed = ~nan
    rows, cols = np.nonzero(observed)
    w = np.asarray(weights, dtype=np.float32)[observed]
    values = sp.csr_array((X[observed], (rows, cols)), shape=X.shape)
    return MaskedBlock(values, sp.csr_array((w, (rows, cols)), shape=X.shape))


def zero_filled(X: Block) -> Block:
    """X with NaN entries set to 0 (sparse X unchanged): what initialisation sees."""
    if sp.issparse(X):
        return X
    return np.where(np.isnan(X), np.float32(0), X) if np.isnan(X).any() else X


# --------------------------------------------------------------------------- normal equations


def outer_rows(F: np.ndarray) -> np.ndarray:
    """Row-wise outer products f_r f_rᵀ of F (r, k), flattened: shape (r, k * k), float32."""
    return np.einsum("ri,rj->rij", F, F, dtype=np.float32).reshape(F.shape[0], -1)


def row_equations(block: MaskedBlock, H: np.ndarray, HHt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every row's normal equations over its observed columns, given H (k, n).

    Returns grams (m_i, k, k) with ``G_r = Σ_j c_rj h_j h_jᵀ`` and rhs (m_i, k) with
    ``b_r = Σ_j c_rj x_rj h_j``. ``HHt`` (k, k) is H Hᵀ (used by the dense form).
    """
    k = H.shape[0]
    Hpairs = outer_rows(np.ascontiguousarray(H.T))
    rhs = np.asarray(block.weighted_values() @ H.T, dtype=np.float32)
    if block.is_dense:
        missing = block.dense_form()[1]
        grams = np.broadcast_to(HHt.astype(np.float32), (block.shape[0], k, k)).copy()
        if missing.nnz:
            grams -= np.asarray(missing @ Hpairs).reshape(-1, k, k)
    else:
        grams = np.asarray(block.observed_form()[1] @ Hpairs, dtype=np.float32).reshape(-1, k, k)
    return grams, rhs


def column_terms(block: MaskedBlock, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The block's share of every column's normal equations, given its W_i (m_i, k).

    Returns rhs (n, k) = ``Σ_r c_rj x_rj w_r`` and grams (n, k * k) = ``Σ_r c_rj w_r w_rᵀ``
    flattened, both float32; summed over blocks they are H's normal equations.
    """
    k = W.shape[1]
    Wpairs = outer_rows(W)
    rhs = np.asarray(block.weighted_values().T @ W, dtype=np.float32)
    if block.is_dense:
        missing = block.dense_form()[1]
        grams = np.broadcast_to((W.T @ W).reshape(1, -1), (block.shape[1], k * k)).astype(np.float32)
        if missing.nnz:
            grams -= np.asarray(missing.T @ Wpairs, dtype=np.float32)
    else:
        grams = np.asarray(block.observed_form()[1].T @ Wpairs, dtype=np.float32)
    return rhs, grams


def penalized(rhs: np.ndarray, grams: np.ndarray, l1: np.ndarray | None,
              l2: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Fold per-row penalties ``l1_r ||w_r||_1 + 0.5 l2_r ||w_r||²`` into the normal equations."""
    if l1 is not None:
        rhs = rhs - l1[:, None].astype(np.float32)
    if l2 is not None:
        grams = grams + l2[:, None, None].astype(np.float32) * np.eye(grams.shape[1], dtype=np.float32)
    return rhs, grams


def hals_rows(F: np.ndarray, rhs: np.ndarray, grams: np.ndarray, *, max_sweeps: int,
              inner_tol: float = 0.0) -> np.ndarray:
    """HALS sweeps on every row's normal equations ``grams[r] f_r = rhs[r]`` with f_r >= 0.

    F (r, k) is updated in place and returned; rhs (r, k); grams (r, k, k). Like
    :func:`distnmf.kernels.hals_sweeps` (one column at a time, the same early stop), but each
    row has its own Gram matrix. A coordinate whose diagonal is 0 (no information) is kept.
    """
    k = F.shape[1]
    first_change = 0.0
    for sweep in range(1, max_sweeps + 1):
        change = 0.0
        for j in range(k):
            diag = grams[:, j, j]
            known = diag > 0
            step = (rhs[:, j] - np.einsum("rc,rc->r", grams[:, j, :], F)) / np.where(known, diag, 1)
            new = np.where(known, np.maximum(F[:, j] + step, 0.0), F[:, j])
            delta = new - F[:, j]
            change += float(delta @ delta)
            F[:, j] = new
        if sweep == 1:
            first_change = change
        elif change <= inner_tol**2 * first_change:
            break
    return F


def projected_gradient(F: np.ndarray, rhs: np.ndarray, grams: np.ndarray) -> float:
    """Σ |projected gradient| of Σ_r 0.5 f_rᵀ G_r f_r - b_r · f_r over F >= 0 (scikit-learn's
    "violation"; with the penalties folded in by :func:`penalized`)."""
    grad = np.einsum("rij,rj->ri", grams, F) - rhs
    return float(np.abs(np.where(F > 0, grad, np.minimum(grad, 0))).sum(dtype=np.float64))


def update_rows(F: np.ndarray, rhs: np.ndarray, grams: np.ndarray, *, max_sweeps: int,
                inner_tol: float = 0.0) -> tuple[np.ndarray, float]:
    """A copy of F updated by :func:`hals_rows`, and the violation before the update."""
    F = np.array(F, dtype=np.float32, copy=True)
    violation = projected_gradient(F, rhs, grams)
    return hals_rows(F, rhs, grams, max_sweeps=max_sweeps, inner_tol=inner_tol), violation


def masked_loss_sq(x_sq: float, F: np.ndarray, rhs: np.ndarray, grams: np.ndarray) -> float:
    """Σ c (x - w·h)² over observed entries, from one side's normal equations (unpenalized):
    ``Σ c x² - 2 Σ_r f_r · b_r + Σ_r f_rᵀ G_r f_r``, in float64."""
    F64 = F.astype(np.float64)
    quad = float(np.einsum("ri,rij,rj->", F64, grams.astype(np.float64), F64))
    return max(x_sq - 2.0 * float(np.vdot(F64, rhs.astype(np.float64))) + quad, 0.0)


def observed_stats(block: MaskedBlock, row_offset: int) -> tuple[float, float, float, np.ndarray]:
    """(Σ c x², Σ x, number observed, per-column counts (n,)) of a block; raises ``ValueError``
    naming the first row with no observed entry."""
    counts = block.row_counts()
    if counts.size and counts.min() == 0:
        row = row_offset + int(np.argmin(counts))
        raise ValueError(f"row {row} of X has no observed entry (missing='unobserved'); a masked fit cannot "
                         f"estimate it: drop rows and columns without data before fitting")
    if block.is_dense:
        values = block.dense_form()[0].astype(np.float64)
        x_sq = float(np.vdot(values, values))
        x_sum = float(values.sum())
    else:
        observed, weights = block.observed_form()
        data = np.asarray(observed.data, dtype=np.float64)
        x_sq = float(data @ (data * weights.data))
        x_sum = float(data.sum())
    return x_sq, x_sum, float(counts.sum()), block.column_counts()



def residual_sq(block: MaskedBlock, W: np.ndarray, H: np.ndarray, chunk: int = 1 << 18) -> float:
    """Σ c (x - w_r · h_j)² over the observed entries of a block, exactly in float64."""
    W64, H64 = W.astype(np.float64), H.astype(np.float64)
    if block.is_dense:
        dense, missing = block.dense_form()
        residual = dense.astype(np.float64) - W64 @ H64
        residual[missing.nonzero()] = 0.0
        return float(np.vdot(residual, residual))
    values, weights = block.observed_form()
    rows = np.repeat(np.arange(values.shape[0]), np.diff(values.indptr))
    total = 0.0
    for s in range(0, values.nnz, chunk):
        r, c = rows[s:s + chunk], values.indices[s:s + chunk]
        residual = values.data[s:s + chunk] - np.einsum("ij,ji->i", W64[r], H64[:, c])
        total += float((residual * weights.data[s:s + chunk]) @ residual)
    return total


def fold_in_rows(block: MaskedBlock, H: np.ndarray, HHt: np.ndarray, *, max_sweeps: int, tol: float,
                 l1: float = 0.0, l2: float = 0.0) -> tuple[np.ndarray, int]:
    """Coefficients W_i (m_i, k) of new rows with H (k, n) fixed, over each row's observed entries.

    Each row is solved alone on its own normal equations (:mod:`distnmf.foldin_kernel`: its own flat
    start and stopping test), so rows do not depend on their neighbours. ``l1`` and ``l2`` are per
    observed entry, as in the fit. Returns W_i and the sweeps of the slowest row.
    """
    from distnmf import foldin_kernel  # numba: imported (~0.5 s) by the first fold-in, not by every fit

    grams, rhs = row_equations(block, H, HHt)
    counts = block.row_counts()
    rhs, grams = penalized(rhs, grams, l1 * counts if l1 else None, l2 * counts if l2 else None)
    W, sweeps = foldin_kernel.hals_fold_in(rhs, grams, max_sweeps=max_sweeps, tol=tol)
    return W, int(sweeps.max(initial=0))
