"""scikit-learn compatibility beyond its own suite: the init on degenerate input, dtypes,
storage-independent iterates, exact reported errors and ``non_negative_factorization``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.decomposition import NMF as SklearnNMF

import distnmf
from distnmf.init import initialize_nmf


def gaussian_kernel(n: int = 200) -> np.ndarray:
    """A smooth, numerically low-rank 200 x 200 matrix (rank ~10 at float precision)."""
    x = np.linspace(0, 1, n)
    return np.exp(-((x[:, None] - x[None, :]) ** 2) / 0.1)


def degenerate_inputs() -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)
    tags = (rng.random((60, 12)) < 0.2).astype(float)
    tags[:, 5] = tags[:, 4]  # duplicate column
    tags[:, 7] = 0  # all-zero column
    rank2 = rng.random((40, 2)) @ rng.random((2, 30))
    return {"gaussian-kernel-k20": (gaussian_kernel(), 20), "one-hot-dup-zero": (tags, 12),
            "exact-rank-2-k6": (rank2, 6), "tiny-2x3": (np.array([[1.0, 0, 2], [0, 3, 1]]), 2),
            "single-entry": (np.array([[5.0]]), 1), "all-but-one-zero": (np.eye(1, 8, 3).repeat(5, 0), 3)}


@pytest.mark.parametrize("name", sorted(degenerate_inputs()))
@pytest.mark.parametrize("init", ["nndsvd", "nndsvda", "nndsvdar", "random", None])
def test_init_never_crashes_on_degenerate_input(name, init):
    X, k = degenerate_inputs()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = distnmf.NMF(k, init=init, random_state=0, max_iter=50)
        W = model.fit_transform(X)
    assert W.shape == (X.shape[0], k) and np.isfinite(W).all() and (W >= 0).all()
    assert np.isfinite(model.components_).all() and (model.components_ >= 0).all()
    assert model.reconstruction_err_ == pytest.approx(np.linalg.norm(X - W @ model.components_), rel=1e-4, abs=1e-6)


def test_gaussian_kernel_fits_as_well_as_scikit_learn():
    """The issue's reproduction: k=20 exceeds the kernel's numerical rank."""
    X = gaussian_kernel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = distnmf.NMF(20, random_state=0).fit(X)
        theirs = SklearnNMF(20, random_state=0).fit(X)
    assert ours.reconstruction_err_ <= 1.01 * theirs.reconstruction_err_


def test_k_above_min_shape_with_random_init():
    X = np.abs(np.random.default_rng(0).standard_normal((5, 4)))
    model = distnmf.NMF(7, random_state=0, max_iter=20)  # init=None picks "random" here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert model.fit_transform(X).shape == (5, 7)
    with pytest.raises(ValueError, match="init = 'nndsvda' can only be used when n_components <= min"):
        distnmf.NMF(7, init="nndsvda").fit(X)


def test_initialize_nmf_behaves_like_scikit_learns():
    """scikit-learn's tests of its initializer, run on distnmf's."""
    data = np.abs(np.random.RandomState(42).randn(10, 10))
    for init in ("random", "nndsvd", "nndsvda", "nndsvdar"):
        W, H = initialize_nmf(data, 10, init=init, random_state=0)
        assert W.dtype == H.dtype == np.float64 and (W >= 0).all() and (H >= 0).all()
    W, H = initialize_nmf(data, 10, init="nndsvd", random_state=0)
    assert np.linalg.norm(W @ H - data) <= np.linalg.norm(data - data.mean())
    # the variants differ from plain NNDSVD only where it has zeros (same seed: same SVD)
    Wa, Ha = initialize_nmf(data, 10, init="nndsvda", random_state=0)
    War, Har = initialize_nmf(data, 10, init="nndsvdar", random_state=0)
    for ref, other in ((W, Wa), (W, War), (H, Ha), (H, Har)):
        np.testing.assert_array_equal(other[ref != 0], ref[ref != 0])
    with pytest.raises(ValueError, match="Negative values in data passed to NMF initialization"):
        initialize_nmf(-data, 2, "nndsvd")


def test_dense_and_sparse_storage_give_the_same_factors():
    """Same non-zero values, so the same sweep budgets and the same iterates (float32 rounding)."""
    rng = np.random.default_rng(3)
    X = rng.random((400, 30)) @ rng.random((30, 300))
    X[rng.random(X.shape) < 0.7] = 0  # sparse enough that the budget would differ by nnz
    results = []
    for data in (X, sp.csr_array(X), sp.csc_matrix(X)):
        model = distnmf.NMF(10, random_state=0, tol=0, max_iter=30)
        results.append((model.fit_transform(data), model.components_))
    for W, H in results[1:]:
        np.testing.assert_allclose(W, results[0][0], rtol=2e-3, atol=1e-4)
        np.testing.assert_allclose(H, results[0][1], rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("dtype,expected", [(np.float32, np.float32), (np.float64, np.float64),
                                            (np.int64, np.float64)])
def test_results_in_the_inputs_float_dtype(dtype, expected):
    X = (np.abs(np.random.default_rng(0).standard_normal((30, 12))) * 10).astype(dtype)
    model = distnmf.NMF(3, random_state=0, max_iter=30, tol=1e-2)
    assert model.fit_transform(X).dtype == expected and model.components_.dtype == expected
    assert model.transform(X).dtype == expected and model.inverse_transform(model.transform(X)).dtype == expected


def test_custom_factors_are_checked_like_scikit_learn():
    X = np.abs(np.random.default_rng(0).standard_normal((6, 5)))
    W, H = np.ones((6, 2)), np.ones((2, 5))
    with pytest.raises(TypeError, match="should have the same dtype as X"):
        distnmf.NMF(init="custom").fit(X, W=W, H=H.astype(np.float32))
    with pytest.raises(ValueError, match=r"Array passed to NMF \(input H\) is full of zeros"):
        distnmf.NMF(init="custom").fit(X, W=W, H=0 * H)
    with pytest.raises(ValueError, match="Array with wrong first dimension passed to NMF \\(input W\\)"):
        distnmf.NMF(init="custom").fit(X, W=np.ones((5, 2)), H=H)
    model = distnmf.NMF(init="custom", max_iter=5)  # n_components="auto": k from H
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert model.fit_transform(X, W=W, H=H).shape == (6, 2)


def test_non_negative_factorization():
    X = np.abs(np.random.default_rng(0).standard_normal((40, 12)))
    W, H, n_iter = distnmf.non_negative_factorization(X, n_components=3, random_state=0, max_iter=400)
    model = distnmf.NMF(3, random_state=0, max_iter=400)
    np.testing.assert_allclose(W, model.fit_transform(X), rtol=1e-6)
    assert n_iter == model.n_iter_
    W_fixed, H_same, sweeps = distnmf.non_negative_factorization(X, H=H, n_components=3, update_H=False)
    assert H_same is not None and 1 <= sweeps <= 200
    np.testing.assert_allclose(W_fixed, model.transform(X), rtol=1e-5)
    with pytest.raises(ValueError, match="shuffle=True is not supported"):
        distnmf.non_negative_factorization(X, n_components=3, shuffle=True)
