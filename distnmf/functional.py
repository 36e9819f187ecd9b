"""scikit-learn's function API on distnmf: ``non_negative_factorization``, and ``fold_in`` (W of
new rows with H fixed)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
from sklearn.utils.validation import check_array

from distnmf import foldin, inputs, kernels
from distnmf.estimator import NMF, compute_regularization
from distnmf.store import Matrix


def non_negative_factorization(X: Any, W: Any = None, H: Any = None, n_components: int | str | None = "auto", *,
                               init: str | None = None, update_H: bool = True, solver: str = "hals",
                               beta_loss: str | float = "frobenius", tol: float = 1e-4, max_iter: int = 200,
                               alpha_W: float = 0.0, alpha_H: float | str = "same", l1_ratio: float = 0.0,
                               random_state: Any = None, verbose: int = 0, shuffle: bool = False
                               ) -> tuple[Any, np.ndarray, int]:
    """scikit-learn's ``non_negative_factorization`` on distnmf: X ≈ W H.

    Same signature and meaning (``solver="hals"`` stands for scikit-learn's ``"cd"``). With
    ``update_H=False``, H (n_components, n_features) is fixed and only W is computed (W is
    ignored, with a warning). ``shuffle=True`` is refused: HALS updates components in order.

    Returns
    -------
    W : ndarray of shape (n_samples, n_components)
    H : ndarray of shape (n_components, n_features)
    n_iter : int
        Iterations of the fit; with ``update_H=False`` the sweeps of the slowest row.
    """
    if shuffle:
        raise ValueError("shuffle=True is not supported: distnmf's HALS updates the components in order")
    est = NMF(n_components=n_components, init=init, solver=solver, beta_loss=beta_loss, tol=tol,
              max_iter=max_iter, random_state=random_state, alpha_W=alpha_W, alpha_H=alpha_H,
              l1_ratio=l1_ratio, verbose=verbose)
    est._validate_params()
    if update_H:
        W = est.fit_transform(X, W=W, H=H)
        return W, est.components_, est.n_iter_
    X = check_array(X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
    if W is not None:
        warnings.warn("When update_H=False, the provided initial W is not used.", RuntimeWarning, stacklevel=2)
    k = X.shape[1] if n_components is None else n_components
    H = inputs.check_init_factor(H, (k, X.shape[1]), "NMF (input H)")
    if H.dtype != X.dtype:
        raise TypeError(f"H should have the same dtype as X. Got H.dtype = {H.dtype}.")
    est.components_, est.n_components_, est._n_components, est.n_features_in_ = H, H.shape[0], H.shape[0], X.shape[1]
    W, n_iter = est._fold_in(X)
    return W, H, n_iter


def make_fold_in(H: np.ndarray, *, beta_loss: str | float = "frobenius", solver: str | None = None,
                 max_iter: int = 200, tol: float = 1e-4, alpha_W: float = 0.0, l1_ratio: float = 0.0,
                 missing: str = "zero") -> foldin.FoldIn:
    """A reusable fold-in against H (k, n) (H H^T computed once): :func:`fold_in`'s parameters, checked."""
    H = np.asarray(H, dtype=np.float32)
    if H.ndim != 2:
        raise ValueError(f"H must be 2-D (n_components, n_features), got shape {H.shape}")
    beta = kernels.beta_to_float(beta_loss)
    l1, l2 = compute_regularization(alpha_W, l1_ratio, H.shape[1])
    return foldin.FoldIn(H, beta, solver or ("hals" if beta == 2.0 else "mu"), max_iter, tol, l1, l2, missing)


def fold_in(X_new: Any, H: np.ndarray, *, beta_loss: str | float = "frobenius", solver: str | None = None,
            max_iter: int = 200, tol: float = 1e-4, alpha_W: float = 0.0, l1_ratio: float = 0.0,
            missing: str = "zero") -> np.ndarray:
    """Coefficients W (r, k) of new rows X_new (r, n) with H (k, n) fixed.

    Uses HALS for the Frobenius loss and multiplicative updates otherwise (or ``solver``);
    ``alpha_W`` and ``l1_ratio`` regularize W as in the fit (and as scikit-learn's ``transform``:
    scaled by n_features). X_new may be numpy, scipy.sparse, a Dask array, a Matrix or a store path.
    ``missing="unobserved"``: only stored (sparse) or non-NaN (dense) entries of X_new are data, as in a
    masked fit. Each row is solved alone (its own start and stopping test): a row's coefficients are
    the same whichever rows it is folded in with.
    """
    if not sp.issparse(X_new) and not isinstance(X_new, (Matrix, da.Array, zarr.Array, str, Path)):
        X_new = np.atleast_2d(np.asarray(X_new, dtype=np.float32))
    return make_fold_in(H, beta_loss=beta_loss, solver=solver, max_iter=max_iter, tol=tol, alpha_W=alpha_W,
                        l1_ratio=l1_ratio, missing=missing)(X_new)
