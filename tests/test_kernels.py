"""Each block kernel against a direct numpy (or scikit-learn) reference on small data."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition._nmf import _beta_divergence, _multiplicative_update_h, _multiplicative_update_w

from distnmf import kernels


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    X = rng.random((40, 25)).astype(np.float32)
    W = rng.random((40, 4)).astype(np.float32)
    H = rng.random((4, 25)).astype(np.float32)
    return X, W, H


def reference_hals_sweep(X, W, H, l1=0.0, l2=0.0):
    """One HALS sweep written out from the definition: each column solves its 1-D problem."""
    W = W.astype(np.float64).copy()
    H = H.astype(np.float64)
    for j in range(W.shape[1]):
        residual = X - W @ H + np.outer(W[:, j], H[j])
        W[:, j] = np.maximum((residual @ H[j] - l1) / (H[j] @ H[j] + l2), 0)
    return W


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.3, 0.0), (0.0, 2.0)])
def test_hals_sweep_matches_definition(problem, l1, l2):
    X, W, H = problem
    got = W.copy()
    sweeps, _ = kernels.hals_sweeps(got, kernels.x_ht(X, H), H @ H.T, max_sweeps=1, l1=l1, l2=l2)
    assert sweeps == 1
    np.testing.assert_allclose(got, reference_hals_sweep(X, W, H, l1, l2), rtol=1e-4, atol=1e-5)


def test_hals_inner_sweeps_decrease_objective(problem):
    X, W, H = problem
    XHt, HHt = kernels.x_ht(X, H), H @ H.T
    losses = []
    for _ in range(5):
        kernels.hals_sweeps(W, XHt, HHt, max_sweeps=1)
        losses.append(np.linalg.norm(X - W @ H))
    assert all(b <= a + 1e-5 for a, b in zip(losses, losses[1:]))


def test_hals_update_h_is_the_transposed_problem(problem):
    X, W, H = problem
    got, _ = kernels.hals_update_h(H, kernels.wt_x(W, X), W.T @ W, max_sweeps=1)
    np.testing.assert_allclose(got, reference_hals_sweep(X.T, H.T, W.T).T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_products_and_stats(problem, sparse):
    X, W, H = problem
    Xs = sp.csr_array(np.where(X > 0.5, X, 0)) if sparse else X
    dense = Xs.toarray() if sparse else X
    np.testing.assert_allclose(kernels.x_ht(Xs, H), dense @ H.T, rtol=1e-5)
    np.testing.assert_allclose(kernels.wt_x(W, Xs), W.T @ dense, rtol=1e-5)
    sq, total, nonzeros = kernels.block_stats(Xs)
    assert sq == pytest.approx(float((dense.astype(np.float64) ** 2).sum()))
    assert total == pytest.approx(float(dense.sum(dtype=np.float64)))
    assert nonzeros == np.count_nonzero(dense)  # the same for both storages


def test_frobenius_error_without_forming_wh(problem):
    X, W, H = problem
    sq = kernels.block_stats(X)[0]
    got = kernels.frobenius_error_sq(sq, kernels.wt_x(W, X), W.T @ W, H)
    expected = np.linalg.norm(X.astype(np.float64) - W.astype(np.float64) @ H) ** 2
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.0, 1.5])
@pytest.mark.parametrize("sparse", [False, True])
def test_mu_updates_match_scikit_learn(problem, beta, sparse):
    X, W, H = problem
    if sparse and beta <= 0:
        pytest.skip("scikit-learn rejects zeros in X for beta <= 0")
    Xs = sp.csr_array(np.where(X > 0.3, X, 0)) if sparse else X
    Xsk = sp.csr_matrix(Xs) if sparse else X
    gamma = kernels.mu_gamma(beta)
    W_ref, *_ = _multiplicative_update_w(Xsk, W.astype(np.float64).copy(), H.astype(np.float64), beta, 0, 0, gamma)
    W_got = kernels.mu_update_block(Xs, W, H, beta)
    np.testing.assert_allclose(W_got, W_ref, rtol=2e-4)
    H_ref = _multiplicative_update_h(Xsk, W_ref, H.astype(np.float64).copy(), beta, 0, 0, gamma)
    if beta == 2.0:
        num, den = kernels.wt_x(W_got, Xs), (W_got.T @ W_got) @ H
    else:
        num, den = kernels.mu_h_terms(Xs, W_got, H, beta)
    np.testing.assert_allclose(kernels.mu_update_h(H, num, den, beta), H_ref, rtol=5e-4)


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.0, 1.5])
@pytest.mark.parametrize("sparse", [False, True])
def test_beta_divergence_sums_over_blocks(problem, beta, sparse):
    X, W, H = problem
    if sparse and beta <= 0:
        pytest.skip("scikit-learn rejects zeros in X for beta <= 0")
    Xs = sp.csr_array(np.where(X > 0.3, X, 0)) if sparse else X
    Xsk = sp.csr_matrix(Xs) if sparse else X
    expected = _beta_divergence(Xsk, W.astype(np.float64), H.astype(np.float64), beta)
    blocks = [(slice(0, 15)), slice(15, 40)]
    got = sum(kernels.beta_divergence_block(Xs[b], W[b], H, beta) for b in blocks)
    assert got == pytest.approx(expected, rel=1e-4)


def test_accelerated_sweep_budget():
    assert kernels.accelerated_sweeps(1000, 4096, 50) > 1  # X_i H^T dominates: reuse it
    assert kernels.accelerated_sweeps(1000, 10, 50) == 1  # sweeps cost as much as X_i H^T
    assert kernels.accelerated_sweeps(10**6, 10**6, 5, cap=10) == 10


def test_projected_gradient_counts_only_feasible_directions():
    W = np.array([[0.0, 1.0]], dtype=np.float32)
    HHt = np.eye(2, dtype=np.float32)
    XHt = np.array([[-2.0, 3.0]], dtype=np.float32)  # gradient (2, -2): W[0,0]=0 can't decrease
    _, violation = kernels.hals_sweeps(W, XHt, HHt)
    assert violation == pytest.approx(2.0)


def test_a_collapsed_column_does_not_kill_its_component(problem):
    """If W[:, j] is all zero, H[j] carries no information and must be left alone (as in
    scikit-learn), so the next W update can revive component j."""
    X, W, H = problem
    W[:, 2] = 0
    H_new, _ = kernels.hals_update_h(H, kernels.wt_x(W, X), W.T @ W, max_sweeps=1)
    np.testing.assert_array_equal(H_new[2], H[2])
    W_next, _ = kernels.hals_update_block(X, W, H_new, H_new @ H_new.T, max_sweeps=1)
    assert W_next[:, 2].any()


def test_one_sweep_iteration_equals_scikit_learn_cd(problem):
    from sklearn.decomposition._nmf import _update_coordinate_descent

    X, W, H = problem
    W_sk, Ht_sk = W.copy(), np.ascontiguousarray(H.T)
    violation_w = _update_coordinate_descent(X, W_sk, Ht_sk, 0, 0, False, None)
    violation_h = _update_coordinate_descent(X.T, Ht_sk, W_sk, 0, 0, False, None)
    W_new, ours_w = kernels.hals_update_block(X, W, H, H @ H.T, max_sweeps=1)
    H_new, ours_h = kernels.hals_update_h(H, kernels.wt_x(W_new, X), W_new.T @ W_new, max_sweeps=1)
    np.testing.assert_allclose(W_new, W_sk, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(H_new, Ht_sk.T, rtol=1e-4, atol=1e-6)
    assert (ours_w, ours_h) == pytest.approx((violation_w, violation_h), rel=1e-4)  # the stopping rule's measure


@pytest.mark.parametrize("sparse", [False, True])
def test_residual_is_exact_in_float64(problem, sparse):
    """||X - W H||² of a block, dense and sparse, against float64 on the dense matrix; also when W H
    reproduces X to 1e-6 (a float32 product would lose the residual there; the sparse form
    ||X||² - 2⟨X, WH⟩ + ⟨WᵀW, HHᵀ⟩ keeps it to float64 rounding of ||X||²)."""
    X, W, H = problem
    X = np.where(X > 0.5, X, 0).astype(np.float32)
    exact_fit = (W.astype(np.float64) @ H.astype(np.float64)) * (1 + 1e-6)
    for target in (X, exact_fit.astype(np.float32)):
        block = sp.csr_array(target) if sparse else target
        expected = float(np.sum((target.astype(np.float64) - W.astype(np.float64) @ H.astype(np.float64)) ** 2))
        x_sq = float(np.sum(target.astype(np.float64) ** 2))
        assert kernels.residual_sq_block(block, W, H) == pytest.approx(expected, rel=1e-6, abs=1e-14 * x_sq)


def test_load_compiled_covers_what_fits_compile():
    """After ``load_compiled`` (what a Dask worker runs as it starts), dense and sparse fits, float32
    and float64, with penalties, compile nothing more: their first iteration pays no numba start-up."""
    import subprocess
    import sys

    probe = """
import numpy as np, scipy.sparse as sp, warnings
from distnmf import NMF, hals_kernel, kernels, sparse_kernel
kernels.load_compiled()
kernels_now = lambda: (len(hals_kernel.sweep_rows.signatures), len(sparse_kernel.stored_cross.signatures))
before = kernels_now()
X = np.random.default_rng(0).random((60, 30))
warnings.simplefilter("ignore")
for data in (X, X.astype(np.float32), sp.csr_array(np.where(X > 0.7, X, 0))):
    NMF(4, max_iter=3, random_state=0).fit(data)
    NMF(4, max_iter=3, random_state=0, alpha_W=0.01, l1_ratio=0.5).fit(data)
print(before == kernels_now(), before)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split()[0] == "True", out.stdout
