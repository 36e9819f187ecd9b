"""Masked NMF (missing="unobserved"): equal to ordinary NMF when nothing is missing, equal across
input forms, block splits and runners, fits held-out entries, weights, checkpoints, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import distnmf
from distnmf.driver import FitConfig, fit_blocks
from distnmf.runner import LocalRunner
from distnmf.source import as_source


def planted(m=240, n=70, k=4, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.random((m, k)) @ rng.random((k, n)) + noise * rng.random((m, n))
    return X.astype(np.float32)


def with_missing(X, fraction, seed=1):
    missing = np.random.default_rng(seed).random(X.shape) < fraction
    missing[:, 0] = missing[0, :] = False  # every row and column keeps data
    Xn = X.copy()
    Xn[missing] = np.nan
    return Xn, missing


def observed_csr(X, missing):
    """The observed entries of X as CSR (an observed 0 would stay stored)."""
    return sp.csr_array((X[~missing], np.nonzero(~missing)), shape=X.shape)


def fit(X, entry_weights=None, W=None, H=None, **params):
    params = {"n_components": 4, "random_state": 0, "max_iter": 300, "tol": 1e-6, **params}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = distnmf.NMF(**params)
        W = model.fit_transform(X, entry_weights=entry_weights, W=W, H=H)
    return W, model


def test_nothing_missing_gives_the_ordinary_factors():
    X = planted()
    W_a, a = fit(X)
    W_b, b = fit(X, missing="unobserved")
    np.testing.assert_allclose(b.components_, a.components_, atol=1e-3 * float(a.components_.max()))
    np.testing.assert_allclose(W_b, W_a, atol=1e-3 * float(W_a.max()))
    def true_error(W, model):
        return float(np.linalg.norm(X.astype(np.float64) - W.astype(np.float64) @ model.components_))

    assert true_error(W_b, b) == pytest.approx(true_error(W_a, a), rel=1e-4)
    assert b.reconstruction_err_ == pytest.approx(true_error(W_b, b), rel=1e-6)  # an exact final pass
    Xn, missing = with_missing(X, 0.3)
    W_c, c = fit(Xn, missing="unobserved")
    residual = np.where(missing, 0, X - W_c.astype(np.float64) @ c.components_)
    assert c.reconstruction_err_ == pytest.approx(np.linalg.norm(residual), rel=1e-6)


def test_dense_nan_sparse_observed_blocks_and_cluster_agree(dask_client):
    X = planted()
    Xn, missing = with_missing(X, 0.3)
    rng = np.random.default_rng(2)
    W0, H0 = rng.random((X.shape[0], 4)).astype(np.float32), rng.random((4, X.shape[1])).astype(np.float32)
    model = distnmf.NMF(4, init="custom", max_iter=30, tol=0, missing="unobserved")
    W_cluster = model.fit_transform(Xn, W=W0, H=H0)  # the test's client is active: runs on the cluster
    for data in (Xn, observed_csr(X, missing)):
        for n_blocks in (1, 5):
            result = fit_blocks(LocalRunner(), as_source(data, n_blocks_hint=n_blocks),
                                FitConfig(4, init="custom", max_iter=30, tol=0, missing="unobserved"), W0, H0)
            np.testing.assert_allclose(result.H, model.components_, rtol=1e-3, atol=1e-4)
            np.testing.assert_allclose(np.concatenate(result.w_handles), W_cluster, rtol=1e-3, atol=1e-4)


def test_held_out_entries_are_predicted_and_zero_filling_is_not():
    X = planted(noise=0.0)
    Xn, missing = with_missing(X, 0.4)
    W, model = fit(Xn, missing="unobserved")
    rms = float(np.sqrt(np.mean(X[missing] ** 2)))
    masked_rmse = float(np.sqrt(np.mean(((W @ model.components_)[missing] - X[missing]) ** 2)))
    W0, zero_filled = fit(np.nan_to_num(Xn))
    zero_rmse = float(np.sqrt(np.mean(((W0 @ zero_filled.components_)[missing] - X[missing]) ** 2)))
    assert masked_rmse < 0.01 * rms < 0.1 * zero_rmse, (masked_rmse, zero_rmse, rms)
    assert model.error_history_[-1] < 1e-3  # relative error over the observed entries


def test_zero_weights_are_missing_entries():
    X = planted()
    Xn, missing = with_missing(X, 0.2)
    rng = np.random.default_rng(3)
    W0, H0 = rng.random((X.shape[0], 4)).astype(np.float32), rng.random((4, X.shape[1])).astype(np.float32)
    params = {"init": "custom", "max_iter": 20, "tol": 0, "missing": "unobserved", "W": W0, "H": H0}
    _, by_nan = fit(Xn, **params)
    weights = np.where(missing, 0.0, 2.0).astype(np.float32)  # a common factor 2 changes nothing either
    _, by_weight = fit(np.where(missing, 5.0, X), entry_weights=weights, **params)
    np.testing.assert_allclose(by_weight.components_, by_nan.components_, rtol=1e-3, atol=1e-4)
    S = observed_csr(X, missing)
    _, sparse_weighted = fit(S, entry_weights=sp.csr_array((np.full(S.nnz, 2.0), S.indices, S.indptr), shape=S.shape),
                             **params)
    np.testing.assert_allclose(sparse_weighted.components_, by_nan.components_, rtol=1e-3, atol=1e-4)


def test_checkpoint_and_resume(tmp_path):
    X = planted()
    S = observed_csr(X, with_missing(X, 0.3)[1])
    straight = distnmf.NMF(4, max_iter=20, tol=0, random_state=0, missing="unobserved").fit(S)
    distnmf.NMF(4, max_iter=10, tol=0, random_state=0, missing="unobserved", checkpoint=tmp_path / "c.zarr",
                checkpoint_every=10).fit(S)
    resumed = distnmf.NMF(4, max_iter=20, tol=0, random_state=0, missing="unobserved",
                          resume=tmp_path / "c.zarr").fit(S)
    assert resumed.n_iter_ == 20
    np.testing.assert_allclose(resumed.components_, straight.components_, rtol=1e-5, atol=1e-6)
    # iteration 10 was the first fit's last: its error there came from the exact final pass
    np.testing.assert_allclose(resumed.error_history_, straight.error_history_, rtol=1e-4)


def _nan_row():
    Xn = planted()
    Xn[7] = np.nan
    return Xn


def _empty_column():
    X = planted()
    X[:, 12] = 0
    return sp.csr_array(X)  # column 12 stores nothing


@pytest.mark.parametrize("make_X, params, message", [
    (lambda: with_missing(planted(), 0.1)[0], {}, r"contains NaN. If NaN marks missing entries, fit with missing='unobserved'"),
    (_nan_row, {"missing": "unobserved"}, "row 7 of X has no observed entry"),
    (_empty_column, {"missing": "unobserved"}, "column 12 of X has no observed entry"),
    (planted, {"missing": "unobserved", "solver": "mu"}, "missing='unobserved' fits with solver='hals'"),
    (lambda: np.where(np.eye(240, 70) > 0, np.inf, planted()), {"missing": "unobserved"}, "contains infinity"),
])
def test_bad_input_is_named(make_X, params, message):
    with pytest.raises(ValueError, match=message):
        distnmf.NMF(3, max_iter=2, **params).fit(make_X())


def test_weights_are_checked():
    X = planted()
    S = sp.csr_array(X)
    with pytest.raises(ValueError, match="pass missing='unobserved'"):
        distnmf.NMF(3).fit(X, entry_weights=np.ones_like(X))
    with pytest.raises(ValueError, match="store exactly X's entries"):
        distnmf.NMF(3, missing="unobserved").fit(S, entry_weights=sp.random(240, 70, density=0.1, format="csr"))
    with pytest.raises(ValueError, match="entry_weights has a negative value"):
        distnmf.NMF(3, missing="unobserved").fit(X, entry_weights=-np.ones_like(X))


def test_transform_folds_in_observed_entries_only():
    X = planted(noise=0.0)
    Xn, _ = with_missing(X, 0.4)
    _, model = fit(Xn, missing="unobserved")
    # new rows: the fitted rows with a different 40% hidden; their coefficients predict the hidden entries
    X_new, hidden = with_missing(X, 0.4, seed=5)
    W_new = model.transform(X_new)
    predicted = W_new @ model.components_
    assert np.sqrt(np.mean((predicted[hidden] - X[hidden]) ** 2)) < 0.01 * np.sqrt(np.mean(X**2))
    np.testing.assert_allclose(model.transform(X_new[:5]), W_new[:5], rtol=1e-5, atol=1e-6)  # rows on their own
    W_sparse = distnmf.fold_in(observed_csr(X, hidden), model.components_, missing="unobserved")
    np.testing.assert_allclose(W_sparse, W_new, rtol=1e-2, atol=1e-3)  # same problems, to the fold-in tol
