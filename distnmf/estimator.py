"""``distnmf.NMF``: a scikit-learn estimator over the block-parallel driver.

The estimator validates parameters (a declarative ``_parameter_constraints`` dict), turns the
input into row blocks, dispatches to :func:`distnmf.driver.fit_blocks` on the active
``distributed.Client`` (or in-process) and stores fitted attributes ending in ``_``.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from distnmf import foldin, inputs, kernels, storage
from distnmf.driver import ZEROS_WITH_BETA_LE_0, FitConfig, FitResult, fit_blocks
from distnmf.init import random_seed, resolve_init
from distnmf.runner import WORKER_TIMEOUT, Runner, make_runner
from distnmf.source import BlockSource, as_source
from distnmf.validation import check_block


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization X ≈ W H, block-parallel and out-of-core.

    Parameters
    ----------
    n_components : int, "auto" or None, default="auto"
        Rank k. "auto" takes it from the custom H (``init="custom"``), else it is n_features,
        as is None (scikit-learn's meanings). The NNDSVD inits need k <= min(n_samples, n_features).
    init : {"nndsvda", "nndsvd", "nndsvdar", "random", "custom"} or None, default=None
        Initialisation; the NNDSVD family uses a blockwise randomized truncated SVD. None means
        "nndsvda" when k <= min(n_samples, n_features), else "random" (scikit-learn's rule).
    solver : {"hals", "mu"}, default="hals"
        Accelerated HALS (Frobenius loss only) or multiplicative updates (any beta loss).
    beta_loss : {"frobenius", "kullback-leibler", "itakura-saito"} or float, default="frobenius"
    tol : float, default=1e-4
        Tolerance of the stopping rule, with scikit-learn's meaning per solver. ``hals`` (like
        scikit-learn's ``cd``): stop when the projected-gradient violation falls below ``tol``
        times the first iteration's and the error decreased by less than ``tol`` times the first
        iteration's error over the last 10 iterations. ``mu``: stop when, over 10 iterations, the error decreased
        by less than ``tol`` times the initial error. 0 runs exactly ``max_iter`` iterations.
    max_iter : int, default=200
    random_state : int, RandomState or None
    alpha_W, alpha_H, l1_ratio : regularization with scikit-learn's meaning and scaling
        (``alpha_W * n_features`` on W, ``alpha_H * n_samples`` on H).
    verbose : int, default=0
        Print one progress line per iteration.
    callback : callable(iteration, relative_error, elapsed_seconds) or None
        Called after each iteration; an exception raised in it aborts the fit.
    checkpoint : path, URL or None
        Zarr group to write W, H, the iteration, the error history and the stopping rule's
        state to, atomically, every ``checkpoint_every`` iterations (a local path or an fsspec
        URL such as ``s3://bucket/prefix/ckpt.zarr``). On a Dask cluster the fit also continues
        from it when workers are lost (without it, a temporary directory serves, removed after
        the fit).
    checkpoint_every : int, default=10
        Also the most iterations a lost worker costs on a cluster.
    resume : path, URL or None
        Checkpoint to continue from (W, H and iteration count are taken from it).
    keep_in_memory : bool or "auto", default="auto"
        Keep X's row blocks in (cluster) memory between iterations; "auto" does so when they
        take at most 40% of the memory available, otherwise they are re-read every pass.
    worker_timeout : float, default=60
        On a Dask cluster: seconds to wait for a worker when the cluster has none (at the
        start, or after all workers were lost mid-fit) before failing with ``TimeoutError``.
    W_store : path, URL or None
        Where ``fit_transform`` writes W for out-of-core input (a Zarr group with array ``W``);
        None uses a new temporary directory. In-memory input returns W as a numpy array.
    missing : {"zero", "unobserved"}, default="zero"
        What an absent entry means. "zero": sparse X's unstored entries are zeros (occurrence
        and tf-idf data) and NaN is rejected. "unobserved": only sparse X's stored entries and
        dense X's non-NaN entries are data (ratings); the loss is
        ``0.5 Σ_observed c_ij (x_ij - (WH)_ij)²`` (``c`` from ``entry_weights``, default 1),
        solved by HALS on every row's (column's) normal equations over its observed entries,
        one pass over X per iteration (:mod:`distnmf.masked`). Needs ``solver="hals"`` and
        the Frobenius loss; a row or column with no observed entry is an error. The penalties
        of a row (column) scale with its number of observed entries instead of ``n_features``
        (``n_samples``), as in ALS-WR; with nothing missing both fits are the same.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        In X's float dtype (float32 for int or out-of-core input); the fit itself computes in
        float32.
    reconstruction_err_ : float
        ||X - WH||_F for the Frobenius loss, else sqrt(2 * beta-divergence); NaN if the fit
        diverged.
    n_iter_ : int
    error_history_ : list of float
        Relative error ``reconstruction_err / ||X||_F`` after each iteration.
    recoveries_ : list of (int, int)
        On a cluster: for each loss of workers survived, the iteration under way and the
        checkpointed iteration the fit continued from (their difference is the work redone).
    timings_ : dict of str to float
        Seconds spent in each phase of the fit: ``validation`` (the pass checking X),
        ``initialisation``, ``iterations``, and ``writing`` (W's output, from fit_transform).
    n_features_in_ : int
    n_components_ : int
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left"), None, StrOptions({"auto"})],
        "init": [StrOptions({"random", "nndsvd", "nndsvda", "nndsvdar", "custom"}), None],
        "solver": [StrOptions({"hals", "mu"})],
        "beta_loss": [StrOptions({"frobenius", "kullback-leibler", "itakura-saito"}), Real],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "alpha_W": [Interval(Real, 0, None, closed="left")],
        "alpha_H": [Interval(Real, 0, None, closed="left"), StrOptions({"same"})],
        "l1_ratio": [Interval(Real, 0, 1, closed="both")],
        "verbose": ["verbose"],
        "callback": [callable, None],
        "checkpoint": [str, Path, None],
        "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
        "resume": [str, Path, None],
        "keep_in_memory": ["boolean", StrOptions({"auto"})],
        "worker_timeout": [Interval(Real, 0, None, closed="left")],
        "W_store": [str, Path, None],
        "missing": [StrOptions({"zero", "unobserved"})],
    }

    def __init__(self, n_components: int | str | None = "auto", *, init: str | None = None, solver: str = "hals",
                 beta_loss: str | float = "frobenius", tol: float = 1e-4, max_iter: int = 200,
                 random_state: Any = None, alpha_W: float = 0.0, alpha_H: float | str = "same",
                 l1_ratio: float = 0.0, verbose: int = 0, callback: Any = None,
                 checkpoint: str | Path | None = None, checkpoint_every: int = 10,
                 resume: str | Path | None = None, keep_in_memory: bool | str = "auto",
                 worker_timeout: float = WORKER_TIMEOUT, W_store: str | Path | None = None,
                 missing: str = "zero") -> None:
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.callback = callback
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.keep_in_memory = keep_in_memory
        self.worker_timeout = worker_timeout
        self.W_store = W_store
        self.missing = missing

    # ------------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any = None, W: np.ndarray | None = None, H: np.ndarray | None = None, *,
            entry_weights: Any = None) -> NMF:
        """Learn H (``components_``) from X of shape (n_samples, n_features).

        ``entry_weights`` (``missing="unobserved"`` only): confidence of each observed entry,
        of X's shape (dense) or storing exactly X's entries (sparse); any input X accepts.
        """
        self._fit(X, W, H, return_w=False, entry_weights=entry_weights)
        return self

    def fit_transform(self, X: Any, y: Any = None, W: np.ndarray | None = None,
                      H: np.ndarray | None = None, *, entry_weights: Any = None) -> np.ndarray | da.Array:
        """Learn the factors and return W of shape (n_samples, n_components).

        W is a numpy array for in-memory input (numpy, scipy.sparse, lists); for stores, Dask
        and Zarr arrays it is a Dask array backed by Zarr (at ``W_store``), never gathered here.
        ``entry_weights`` as in :meth:`fit`.
        """
        return self._fit(X, W, H, return_w=True, entry_weights=entry_weights)

    def _fit(self, X: Any, W0: np.ndarray | None, H0: np.ndarray | None, return_w: bool,
             entry_weights: Any = None) -> Any:
        self._validate_params()
        if entry_weights is not None and self.missing != "unobserved":
            raise ValueError("entry_weights weight the observed entries of a masked fit; pass missing='unobserved'")
        runner = make_runner(worker_timeout=self.worker_timeout)
        try:
            source = self._source(X, reset=True, runner=runner)
            self._dtype = inputs.float_dtype(X)
            config = self._config(source, W0, H0)
            weights = None if entry_weights is None else inputs.weight_source(entry_weights)
            result = fit_blocks(runner, source, config, W0, H0, weights)
            self._store_result(result, source)
            if not return_w:
                return None
            writing = time.perf_counter()
            W = self._output_w(runner, result, source)
            self.timings_["writing"] = time.perf_counter() - writing
            return W
        finally:
            runner.close()

    def _source(self, X: Any, reset: bool, runner: Runner) -> BlockSource:
        """Validate in-memory input with scikit-learn's helpers; wrap everything as row blocks
        sized for the runner's workers (a task's working set within ``runner.task_memory``)."""
        blocks = {"n_blocks_hint": inputs.blocks_hint(runner, X), "task_memory": runner.task_memory,
                  # the beta-divergence tasks hold W H and X / (W H)^(2-beta) besides the block
                  "temporaries": 1 if kernels.beta_to_float(self.beta_loss) == 2.0 else 4}
        if isinstance(X, inputs.IN_MEMORY_TYPES) or sp.issparse(X):
            return as_source(self._validated(X, reset), **blocks)
        source = as_source(X, **blocks)
        if reset:
            self.n_features_in_ = source.shape[1]
        elif source.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {source.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        return source

    def _validated(self, X: Any, reset: bool) -> np.ndarray | sp.sparray | sp.spmatrix:
        """In-memory X checked with scikit-learn's helpers (float64 or float32, n_features), finite (NaN
        allowed with ``missing="unobserved"``) and non-negative."""
        allow_nan = self.missing == "unobserved" and not sp.issparse(X)
        try:
            X = validate_data(self, X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32],
                              reset=reset, ensure_all_finite="allow-nan" if allow_nan else True)
        except ValueError as exc:
            if "NaN" not in str(exc) or self.missing == "unobserved":
                raise
            raise ValueError(f"{str(exc).splitlines()[0]} If NaN marks missing entries, fit with "
                             f"missing='unobserved'.") from None
        try:
            check_block(X, allow_nan=allow_nan)
        except ValueError as exc:  # scikit-learn's wording first, then where the value is
            raise ValueError(f"Negative values in data passed to {type(self).__name__} (input X): {exc}") from None
        return X

    def _config(self, source: BlockSource, W0: np.ndarray | None, H0: np.ndarray | None) -> FitConfig:
        m, n = source.shape
        beta = kernels.beta_to_float(self.beta_loss)
        if self.missing == "unobserved" and (self.solver != "hals" or beta != 2.0):
            raise ValueError(f"missing='unobserved' fits with solver='hals' and beta_loss='frobenius', got "
                             f"solver={self.solver!r}, beta_loss={self.beta_loss!r}")
        if self.solver != "mu" and beta != 2.0:
            raise ValueError(f"Invalid beta_loss parameter: solver {self.solver!r} does not handle "
                             f"beta_loss = {self.beta_loss!r}; use solver='mu'")
        if beta <= 0 and inputs.has_zeros(source):
            raise ValueError(ZEROS_WITH_BETA_LE_0)
        if self.init == "custom":
            k = inputs.check_custom(W0, H0, m, n, self.n_components, self._dtype)
        else:
            if W0 is not None or H0 is not None:
                warnings.warn("When init!='custom', provided W or H are ignored. Set  init='custom' to use "
                              "them as initialization.", RuntimeWarning, stacklevel=4)
            k = n if self.n_components in (None, "auto") else int(self.n_components)
        self._n_components = k
        init = resolve_init(self.init, k, (m, n))
        if self.solver == "mu" and init == "nndsvd":
            warnings.warn("The multiplicative update ('mu') solver cannot update zeros present in the "
                          "initialization, and so leads to poorer results when used jointly with "
                          "init='nndsvd'. You may try init='nndsvda' or init='nndsvdar' instead.",
                          UserWarning, stacklevel=4)
        alpha_H = self.alpha_W if self.alpha_H == "same" else float(self.alpha_H)
        l1_W, l2_W = compute_regularization(self.alpha_W, self.l1_ratio, n)
        l1_H, l2_H = compute_regularization(alpha_H, self.l1_ratio, m)
        seed = random_seed(self.random_state)
        return FitConfig(
            n_components=k, solver=self.solver, beta=beta, init=init, max_iter=self.max_iter,
            tol=self.tol, seed=seed, l1_W=l1_W, l2_W=l2_W, l1_H=l1_H, l2_H=l2_H,
            verbose=self.verbose, callback=self.callback, checkpoint=self.checkpoint,
            checkpoint_every=self.checkpoint_every, resume=self.resume, keep_in_memory=self.keep_in_memory,
            missing=self.missing)

    def _store_result(self, result: FitResult, source: BlockSource) -> None:
        self.components_ = result.H.astype(self._dtype, copy=False)
        self.n_components_ = result.H.shape[0]
        self.n_iter_ = result.n_iter
        self.error_history_ = list(result.errors)
        self.recoveries_ = list(result.recoveries)
        self.reconstruction_err_ = float(result.reconstruction_err)
        self.timings_ = dict(result.timings)
        if not (np.isfinite(self.components_).all() and np.isfinite(self.reconstruction_err_)):
            self.reconstruction_err_ = float("nan")
            warnings.warn("The fit diverged: the factors have non-finite entries.", RuntimeWarning,
                          stacklevel=3)
        if not result.converged and self.tol > 0 and result.n_iter >= self.max_iter:
            warnings.warn(f"Maximum number of iterations {self.max_iter} reached. Increase it to improve "
                          f"convergence.", ConvergenceWarning, stacklevel=3)

    def _output_w(self, runner: Runner, result: FitResult, source: BlockSource) -> np.ndarray | da.Array:
        path = (storage.as_location(self.W_store) if self.W_store is not None
                else Path(tempfile.mkdtemp(prefix="distnmf-W-")) / "W.zarr" if source.out_of_core else None)
        return foldin.output_w(runner, result.w_handles, source, self._dtype, result.H.shape[0], path)

    # ------------------------------------------------------------------ using the fit

    def transform(self, X: Any) -> np.ndarray | da.Array:
        """Coefficients W (n_samples, n_components) of new samples X (n_samples, n_features) with H fixed
        (fold-in): each row solved alone, so its coefficients do not depend on the other rows of X."""
        check_is_fitted(self)
        return self._fold_in(X)[0]

    def _fold_in(self, X: Any) -> tuple[np.ndarray | da.Array, int]:
        """W for X with ``components_`` fixed, and the sweeps its slowest row took."""
        beta = kernels.beta_to_float(self.beta_loss)
        l1, l2 = compute_regularization(self.alpha_W, self.l1_ratio, self.n_features_in_)
        if self.missing == "zero" and (isinstance(X, inputs.IN_MEMORY_TYPES) or sp.issparse(X)):
            X = self._validated(X, reset=False)
            if foldin.folds_here(X):  # a few rows: in this thread, without a runner's set-up (~3 ms)
                fold = foldin.FoldIn(np.asarray(self.components_, dtype=np.float32), beta, self.solver,
                                     self.max_iter, self.tol, l1, l2)
                W, sweeps = fold.rows(X)
                return W.astype(X.dtype, copy=False), int(sweeps.max(initial=0))
        runner = make_runner()
        try:
            source = self._source(X, reset=False, runner=runner)
            results = foldin.transform_blocks(runner, source, self.components_, beta, self.solver, self.max_iter,
                                              self.tol, l1, l2, self.missing)
            n_iter = max(runner.gather(runner.select(results, 1, "nmf-fold-in-sweeps")))
            path = Path(tempfile.mkdtemp(prefix="distnmf-W-")) / "W.zarr" if source.out_of_core else None
            return foldin.output_w(runner, runner.select(results, 0, "nmf-fold-in-W"), source, inputs.float_dtype(X),
                                   self.n_components_, path), n_iter
        finally:
            runner.close()

    def inverse_transform(self, X: np.ndarray) -> np.ndarray:
        """Reconstruct data from coefficients: X (n_samples, n_components) @ components_."""
        check_is_fitted(self)
        X = check_array(X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
        if X.shape[1] != self.n_components_:
            raise ValueError(f"W must have shape (n_samples, {self.n_components_}), got {X.shape}")
        return np.asarray(X @ self.components_, dtype=self.components_.dtype)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]


def compute_regularization(alpha: float, l1_ratio: float, other_dim: int) -> tuple[float, float]:
    """(l1, l2) penalty of one factor as scikit-learn scales it: ``alpha`` times the other
    dimension (n_features for W, n_samples for H), split by ``l1_ratio``."""
    return other_dim * alpha * l1_ratio, other_dim * alpha * (1 - l1_ratio)
