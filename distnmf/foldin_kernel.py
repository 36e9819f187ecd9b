"""Compiled per-row HALS for fold-in: every row's non-negative least squares with H fixed, alone.

Row r of W solves ``min_{w >= 0} 0.5 wᵀ G w - bᵀ w`` — with ``b = X_r Hᵀ - l1`` and ``G = H Hᵀ + l2 I``
for the Frobenius loss with scikit-learn's penalties, or a row's own normal equations over its
observed entries (``distnmf.masked``). Each row starts from its own flat value, the least-squares
best constant vector ``max(Σ b, 0) / Σ G`` (zero for a zero row), and stops on
its own: once a sweep changes it by less than ``tol`` times its first sweep's change.
Nothing crosses rows, so folding rows in together or one by one gives the same coefficients, up to
the rounding of the ``b`` the caller computed.

Compiled with numba (:mod:`distnmf.compiled`). A one-row fold-in (k=20) takes a few microseconds,
against ~0.4 ms for the same sweeps in numpy, whose per-call overhead dominates at that size.
"""

from __future__ import annotations

import numpy as np

from distnmf.compiled import compiled


@compiled
def _solve_row(w: np.ndarray, b: np.ndarray, G: np.ndarray, start: float, max_sweeps: int, tol2: float) -> int:
    """HALS sweeps on one row: w (k,) float32 overwritten from ``start``; returns the sweeps done."""
    k = w.shape[0]
    for j in range(k):
        w[j] = start
    first_change = 0.0
    sweep = 0
    for sweep in range(1, max_sweeps + 1):
        change = 0.0
        for j in range(k):
            diagonal = G[j, j]
            if diagonal <= 0:  # H's row j is all zero: no information, the coefficient keeps its start
                continue
            gradient = np.float64(b[j])
            for r in range(k):
                gradient -= G[j, r] * w[r]
            new = max(w[j] + gradient / diagonal, 0.0)
            delta = new - w[j]
            change += delta * delta
            w[j] = new
        if sweep == 1:
            first_change = change
            if change == 0.0:
                break
        elif change <= tol2 * first_change:
            break
    return sweep


@compiled
def _flat_start(b: np.ndarray, G: np.ndarray) -> float:
    """The least-squares best constant vector's value ``max(Σ b, 0) / Σ G``; 0 when Σ G is 0."""
    total_G = 0.0
    for value in G.ravel():
        total_G += value
    return max(np.float64(b.sum()), 0.0) / total_G if total_G > 0 else 0.0


@compiled
def flat_starts(B: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Each row's flat start, (m,) float64, for B (m, k) and G (k, k) shared by the rows."""
    return np.array([_flat_start(B[i], G) for i in range(B.shape[0])])


def hals_fold_in(B: np.ndarray, G: np.ndarray, *, max_sweeps: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Every row of B (m, k) solved against G: (k, k) shared, or (m, k, k) one per row.

    Returns W (m, k) float32 and the sweeps each row took, (m,) int64.
    """
    B = np.ascontiguousarray(B, dtype=np.float32)
    G = np.ascontiguousarray(G, dtype=np.float32)
    if G.ndim == 2:
        return _rows_shared(B, G, max_sweeps, tol)
    return _rows_own(B, G, max_sweeps, tol)


TILE = 64  # rows solved side by side by _rows_shared: its inner loops then run across rows (SIMD)


@compiled
def _rows_shared(B: np.ndarray, G: np.ndarray, max_sweeps: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows against one G: below :data:`TILE` rows one at a time (:func:`_solve_row`), else in tiles of
    TILE rows swept together — the same operations per row in the same order, so the same bits as one
    at a time (tested), and 4x faster on 10,000 rows (k=20), as fast as numpy over rows."""
    m, k = B.shape
    W = np.empty((m, k), dtype=np.float32)
    sweeps = np.zeros(m, dtype=np.int64)
    tol2 = tol * tol
    if m < TILE:
        for i in range(m):
            sweeps[i] = _solve_row(W[i], B[i], G, _flat_start(B[i], G), max_sweeps, tol2)
        return W, sweeps
    Wt = np.zeros((k, TILE), dtype=np.float32)  # a tile's coefficients, one column per row
    Bt = np.zeros((k, TILE), dtype=np.float32)
    gradient = np.empty(TILE, dtype=np.float64)
    change = np.empty(TILE, dtype=np.float64)
    first_change = np.zeros(TILE, dtype=np.float64)
    active = np.zeros(TILE, dtype=np.bool_)
    for offset in range(0, m, TILE):
        rows = min(TILE, m - offset)
        for t in range(TILE):  # a short last tile is padded with inactive zero rows
            active[t] = t < rows
            start = _flat_start(B[offset + t], G) if t < rows else 0.0
            for j in range(k):
                Wt[j, t] = start
                Bt[j, t] = B[offset + t, j] if t < rows else 0.0
        n_active = rows
        for sweep in range(1, max_sweeps + 1):
            change[:] = 0.0
            for j in range(k):
                diagonal = G[j, j]
                if diagonal <= 0:
                    continue
                for t in range(TILE):
                    gradient[t] = Bt[j, t]
                for r in range(k):
                    g_jr = G[j, r]
                    for t in range(TILE):
                        gradient[t] -= g_jr * Wt[r, t]
                for t in range(TILE):
                    if active[t]:
                        new = max(Wt[j, t] + gradient[t] / diagonal, 0.0)
                        delta = new - Wt[j, t]
                        change[t] += delta * delta
                        Wt[j, t] = new
            for t in range(rows):
                if active[t]:
                    sweeps[offset + t] = sweep
                    if sweep == 1:
                        first_change[t] = change[t]
                        done = change[t] == 0.0
                    else:
                        done = change[t] <= tol2 * first_change[t]
                    if done:
                        active[t] = False
                        n_active -= 1
            if n_active == 0:
                break
        for t in range(rows):
            for j in range(k):
                W[offset + t, j] = Wt[j, t]
    return W, sweeps


@compiled
def _rows_own(B: np.ndarray, G: np.ndarray, max_sweeps: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    m, k = B.shape
    W = np.empty((m, k), dtype=np.float32)
    sweeps = np.zeros(m, dtype=np.int64)
    for i in range(m):
        sweeps[i] = _solve_row(W[i], B[i], G[i], _flat_start(B[i], G[i]), max_sweeps, tol * tol)
    return W, sweeps
