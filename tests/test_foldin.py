"""Fold-in solves every row alone: batch or one by one, the same coefficients; each row is the
non-negative least-squares solution (scipy.optimize.nnls, or the KKT conditions with penalties)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls

import distnmf
from distnmf import foldin_kernel
from distnmf.functional import make_fold_in


def _problem(n_rows: int = 60, n_cols: int = 300, k: int = 8, seed: int = 0, density: float = 0.3):
    """H (k, n) well conditioned (non-negative, distinct supports), rows X (m, n) near its cone, with
    zero rows and a sparse row of 6 values among them."""
    rng = np.random.default_rng(seed)
    H = (rng.gamma(0.5, size=(k, n_cols)) * (rng.random((k, n_cols)) < 0.5)).astype(np.float32)
    X = rng.gamma(0.5, size=(n_rows, k)) @ H + rng.random((n_rows, n_cols)) * 0.05
    X *= rng.random((n_rows, n_cols)) < density + 0.7
    X[[3, 17]] = 0.0
    X[5] = 0.0
    X[5, rng.choice(n_cols, 6, replace=False)] = rng.random(6) + 0.5
    return X.astype(np.float32), H


def _kkt_violation(W: np.ndarray, X: np.ndarray, H: np.ndarray, l1: float = 0.0, l2: float = 0.0) -> float:
    """Largest violation of the optimality conditions of 0.5||x - wH||² + l1 Σw + 0.5 l2 ||w||², w >= 0,
    relative to the gradient's scale: g = w (HHᵀ + l2 I) - xHᵀ + l1 must be >= 0, and 0 where w > 0."""
    W, X, H = W.astype(np.float64), X.astype(np.float64), H.astype(np.float64)
    grad = W @ (H @ H.T + l2 * np.eye(len(H))) - X @ H.T + l1
    scale = np.abs(X @ H.T).max() + l1 + 1e-12
    return float(max(np.maximum(-grad, 0).max(), np.abs(np.where(W > 0, grad, 0)).max()) / scale)


@pytest.mark.parametrize("storage", ["dense", "sparse"])
@pytest.mark.parametrize("loss", ["frobenius", "kullback-leibler"])
def test_a_row_gets_the_same_coefficients_alone_or_in_any_batch(storage, loss):
    X, H = _problem()
    Xs = sp.csr_array(X) if storage == "sparse" else X
    fold = make_fold_in(H, beta_loss=loss)
    together = fold(Xs)
    permutation = np.random.default_rng(1).permutation(len(X))
    shuffled = fold(Xs[permutation])[np.argsort(permutation)]
    halves = np.concatenate([fold(Xs[:7]), fold(Xs[7:])])
    alone = np.concatenate([fold(Xs[i:i + 1]) for i in range(len(X))])
    for other in (shuffled, halves, alone):  # only X Hᵀ's BLAS rounding may differ with the batch's shape
        np.testing.assert_allclose(other, together, rtol=1e-5, atol=1e-6 * together.max())
    assert together.dtype == np.float32 and together.shape == (60, 8)
    assert not together[[3, 17]].any()  # zero rows fold in to zero


def test_the_compiled_rows_are_bit_identical_in_any_batch():
    """Batches of TILE rows or more are swept in tiles, smaller ones row by row: the same bits."""
    X, H = _problem(n_rows=2 * foldin_kernel.TILE + 22)
    B, G = X @ H.T, H @ H.T
    together, sweeps = foldin_kernel.hals_fold_in(B, G, max_sweeps=500, tol=1e-4)
    np.testing.assert_array_equal(foldin_kernel.hals_fold_in(B[7:90], G, max_sweeps=500, tol=1e-4)[0], together[7:90])
    for i in (0, 5, 31, 140):
        alone, alone_sweeps = foldin_kernel.hals_fold_in(B[i:i + 1], G, max_sweeps=500, tol=1e-4)
        np.testing.assert_array_equal(alone[0], together[i])
        assert alone_sweeps[0] == sweeps[i]
    assert sweeps[3] == 1 and sweeps.max() < 500  # a zero row stops at once; every row converged


@pytest.mark.parametrize("storage", ["dense", "sparse"])
def test_rows_are_the_nonnegative_least_squares_solution(storage):
    X, H = _problem(seed=2)
    W = distnmf.fold_in(sp.csr_array(X) if storage == "sparse" else X, H, tol=1e-6, max_iter=2000)
    for i in range(0, len(X), 7):
        expected, _ = nnls(H.T.astype(np.float64), X[i].astype(np.float64))
        np.testing.assert_allclose(W[i], expected, rtol=1e-3, atol=1e-4 * max(expected.max(), 1e-3))
    assert _kkt_violation(W, X, H) < 1e-4


@pytest.mark.parametrize(("alpha_W", "l1_ratio"), [(0.01, 1.0), (0.01, 0.0), (0.005, 0.5)])
def test_penalties_are_scaled_as_scikit_learns_transform(alpha_W, l1_ratio):
    """scikit-learn's transform penalizes W by alpha_W * n_features (split by l1_ratio); the fold-in's
    rows satisfy that problem's optimality conditions, and ridge rows match an augmented NNLS."""
    X, H = _problem(seed=3)
    n = H.shape[1]
    l1, l2 = n * alpha_W * l1_ratio, n * alpha_W * (1 - l1_ratio)
    W = distnmf.fold_in(X, H, alpha_W=alpha_W, l1_ratio=l1_ratio, tol=1e-6, max_iter=2000)
    assert _kkt_violation(W, X, H, l1, l2) < 1e-4
    plain = distnmf.fold_in(X, H, tol=1e-6, max_iter=2000)
    assert np.abs(W).sum() < np.abs(plain).sum()
    if l1_ratio == 0.0:
        augmented = np.vstack([H.T, np.sqrt(l2) * np.eye(len(H))]).astype(np.float64)
        for i in (0, 9):
            expected, _ = nnls(augmented, np.concatenate([X[i], np.zeros(len(H))]).astype(np.float64))
            np.testing.assert_allclose(W[i], expected, rtol=1e-3, atol=1e-4 * expected.max())


def test_rank_deficient_h_still_solves_each_row_alone():
    """H with a duplicated and an all-zero component: the solution is not unique, but every row reaches
    the least-squares optimum, the zero component keeps its (flat) start, and batches do not matter."""
    X, H = _problem(seed=4, k=6)
    H = np.vstack([H, H[:1], np.zeros((1, H.shape[1]), dtype=np.float32)])
    fold = make_fold_in(H, tol=1e-7, max_iter=5000)
    W = fold(X)
    np.testing.assert_allclose(np.concatenate([fold(X[i:i + 1]) for i in range(len(X))]), W, rtol=1e-5,
                               atol=1e-6 * W.max())
    for i in (0, 8, 20):
        expected, _ = nnls(H.T.astype(np.float64), X[i].astype(np.float64))
        optimum = np.linalg.norm(X[i] - expected @ H)
        assert np.linalg.norm(X[i] - W[i] @ H) <= optimum * (1 + 1e-4) + 1e-6


def test_dtypes_and_estimator_transform_agree_with_the_function():
    X, H = _problem(seed=5)
    model = distnmf.NMF(8, random_state=0, max_iter=50).fit(X)
    W32 = model.transform(X[:10])
    W64 = model.transform(X[:10].astype(np.float64))
    assert W32.dtype == np.float32 and W64.dtype == np.float64
    np.testing.assert_allclose(W64, W32, rtol=1e-4, atol=1e-6 * W32.max())  # X Hᵀ in float64 or float32
    np.testing.assert_allclose(W32, distnmf.fold_in(X[:10], model.components_), rtol=1e-5,
                               atol=1e-6 * W32.max())
    np.testing.assert_allclose(model.transform(X[4:5]), W32[4:5], rtol=1e-5, atol=1e-6 * W32.max())


def test_masked_rows_do_not_depend_on_their_batch():
    X, H = _problem(seed=6)
    X = X.copy()
    X[np.random.default_rng(0).random(X.shape) < 0.2] = np.nan
    fold = make_fold_in(H, missing="unobserved")
    W = fold(X)
    np.testing.assert_allclose(np.concatenate([fold(X[:11]), fold(X[11:])]), W, rtol=1e-5, atol=1e-6 * W.max())
    observed = ~np.isnan(X[0])
    expected, _ = nnls(H[:, observed].T.astype(np.float64), X[0, observed].astype(np.float64))
    np.testing.assert_allclose(W[0], expected, rtol=1e-2, atol=1e-3 * expected.max())


def test_the_kernel_compiles_without_a_writable_cache():
    """With no writable place for numba's cache (a read-only install and home), the kernel is compiled
    in the process instead of failing at import."""
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "_UserProvidedCacheLocator"}  # none applies
    env.pop("NUMBA_CACHE_DIR", None)
    code = ("import numpy as np; from distnmf import foldin_kernel as k; "
            "assert type(k._rows_shared._cache).__name__ == 'NullCache'; "
            "W, _ = k.hals_fold_in(np.array([[2.0, 0.0]], np.float32), np.eye(2, dtype=np.float32), "
            "max_sweeps=50, tol=1e-6); print(W.tolist())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[[2.0, 0.0]]"
