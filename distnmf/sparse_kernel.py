"""Compiled reductions over the stored entries of a CSR block (numba, :mod:`distnmf.compiled`)."""

from __future__ import annotations

import numpy as np

from distnmf.compiled import compiled


@compiled
def stored_cross(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, W: np.ndarray, Ht: np.ndarray) -> float:
    """⟨X, W H⟩ over X's stored entries, in float64: Σ x_ij (W_i · H_:j) for X (m, n) in CSR,
    W (m, k) and Ht = Hᵀ (n, k) C-contiguous. One pass over the entries (numpy's gather of W's rows
    and H's columns per entry, with einsum, took 8x as long on a 75,000 x 73,890 tag block)."""
    m, k = W.shape
    total = 0.0
    for i in range(m):
        for p in range(indptr[i], indptr[i + 1]):
            column = indices[p]
            product = 0.0
            for j in range(k):
                product += np.float64(W[i, j]) * np.float64(Ht[column, j])
            total += np.float64(data[p]) * product
    return total
