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
import zarr
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, check_non_negative, validate_data

from distnmf import kernels, masked, storage
from distnmf.checkpoint import write_w
from distnmf.driver import ZEROS_WITH_BETA_LE_0, FitConfig, FitResult, fit_blocks
from distnmf.init import resolve_init
from distnmf.runner import WORKER_TIMEOUT, Runner, active_client, make_runner
from distnmf.solvers import masked_stats_task, stats_task
from distnmf.source import BlockSource, as_source, materialize
from distnmf.storage import Location, atomic_path
from distnmf.store import Matrix
from distnmf.validation import check_block

IN_MEMORY_TYPES = (np.ndarray, list, tuple)


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
            self._dtype = _float_dtype(X)
            config = self._config(source, W0, H0)
            weights = None if entry_weights is None else _weight_source(entry_weights)
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
        blocks = {"n_blocks_hint": _blocks_hint(runner, X), "task_memory": runner.task_memory,
                  # the beta-divergence tasks hold W H and X / (W H)^(2-beta) besides the block
                  "temporaries": 1 if kernels.beta_to_float(self.beta_loss) == 2.0 else 4}
        if isinstance(X, IN_MEMORY_TYPES) or sp.issparse(X):
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
            return as_source(X, **blocks)
        source = as_source(X, **blocks)
        if reset:
            self.n_features_in_ = source.shape[1]
        elif source.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {source.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        return source

    def _config(self, source: BlockSource, W0: np.ndarray | None, H0: np.ndarray | None) -> FitConfig:
        m, n = source.shape
        beta = kernels.beta_to_float(self.beta_loss)
        if self.missing == "unobserved" and (self.solver != "hals" or beta != 2.0):
            raise ValueError(f"missing='unobserved' fits with solver='hals' and beta_loss='frobenius', got "
                             f"solver={self.solver!r}, beta_loss={self.beta_loss!r}")
        if self.solver != "mu" and beta != 2.0:
            raise ValueError(f"Invalid beta_loss parameter: solver {self.solver!r} does not handle "
                             f"beta_loss = {self.beta_loss!r}; use solver='mu'")
        if beta <= 0 and _has_zeros(source):
            raise ValueError(ZEROS_WITH_BETA_LE_0)
        if self.init == "custom":
            k = _check_custom(W0, H0, m, n, self.n_components, self._dtype)
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
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
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
        if not source.out_of_core and self.W_store is None:
            return np.concatenate(runner.gather(result.w_handles)).astype(self._dtype, copy=False)
        path = (storage.as_location(self.W_store) if self.W_store is not None
                else Path(tempfile.mkdtemp(prefix="distnmf-W-")) / "W.zarr")
        write_w_store(runner, result.w_handles, source.bounds, path, result.H.shape[0])
        return da.from_zarr(str(path), component="W")

    # ------------------------------------------------------------------ using the fit

    def transform(self, X: Any) -> np.ndarray | da.Array:
        """Coefficients W of new samples X (n_samples, n_features) with H fixed (fold-in)."""
        check_is_fitted(self)
        return self._fold_in(X)[0]

    def _fold_in(self, X: Any) -> tuple[np.ndarray | da.Array, int]:
        """W for X with ``components_`` fixed, and the sweeps its slowest row took."""
        runner = make_runner()
        try:
            source = self._source(X, reset=False, runner=runner)
            results = transform_blocks(runner, source, self.components_, kernels.beta_to_float(self.beta_loss),
                                       self.solver, self.max_iter, self.tol, self.alpha_W, self.l1_ratio,
                                       self.missing)
            w_handles = runner.select(results, 0, "nmf-fold-in-W")
            n_iter = max(runner.gather(runner.select(results, 1, "nmf-fold-in-sweeps")))
            if source.out_of_core:
                path = Path(tempfile.mkdtemp(prefix="distnmf-W-")) / "W.zarr"
                write_w_store(runner, w_handles, source.bounds, path, self.n_components_)
                return da.from_zarr(str(path), component="W"), n_iter
            return np.concatenate(runner.gather(w_handles)).astype(_float_dtype(X), copy=False), n_iter
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
    H = check_init_factor(H, (k, X.shape[1]), "NMF (input H)")
    if H.dtype != X.dtype:
        raise TypeError(f"H should have the same dtype as X. Got H.dtype = {H.dtype}.")
    est.components_, est.n_components_, est._n_components, est.n_features_in_ = H, H.shape[0], H.shape[0], X.shape[1]
    W, n_iter = est._fold_in(X)
    return W, H, n_iter


# --------------------------------------------------------------------------- fold-in


def _fold_in_task(x: Any, H: np.ndarray, HHt: np.ndarray, avg: float, beta: float, solver: str,
                  max_iter: int, tol: float, l1: float, l2: float) -> tuple[np.ndarray, int]:
    """Coefficients of one block with H fixed: HALS (or MU) to convergence from the flat start
    ``avg`` (scikit-learn's ``sqrt(mean(X) / k)`` over all of X, so rows don't depend on blocks).
    Returns W_i (m_i, k) and the number of sweeps (iterations) done."""
    block = materialize(x)
    W = np.full((block.shape[0], H.shape[0]), avg, dtype=np.float32)
    if solver == "hals":
        XHt = kernels.x_ht(block, H)
        if l1:
            XHt -= l1
        if l2:
            HHt = HHt + l2 * np.eye(len(HHt), dtype=HHt.dtype)
        return kernels.hals_fold_in(W, XHt, HHt, max_sweeps=max_iter, tol=tol)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        previous = W
        W = kernels.mu_update_block(block, W, H, beta, HHt=HHt if beta == 2.0 else None, l1=l1, l2=l2)
        change = np.linalg.norm(W - previous)
        if change <= tol * max(float(np.linalg.norm(W)), 1e-12):
            break
    return W, n_iter


def compute_regularization(alpha: float, l1_ratio: float, other_dim: int) -> tuple[float, float]:
    """(l1, l2) penalty of one factor as scikit-learn scales it: ``alpha`` times the other
    dimension (n_features for W, n_samples for H), split by ``l1_ratio``."""
    return other_dim * alpha * l1_ratio, other_dim * alpha * (1 - l1_ratio)


def transform_blocks(runner: Runner, source: BlockSource, H: np.ndarray, beta: float, solver: str,
                     max_iter: int, tol: float, alpha_W: float = 0.0, l1_ratio: float = 0.0,
                     missing: str = "zero") -> list[Any]:
    """Fold-in over row blocks for fixed H (k, n), with the W regularization of scikit-learn
    (``alpha_W * n_features``, split by ``l1_ratio``): per-block handles of (W_i, sweeps done).
    ``missing="unobserved"``: each row's problem is over its observed entries only."""
    n = source.shape[1]
    l1, l2 = compute_regularization(alpha_W, l1_ratio, n)
    x_handles = runner.load(source, keep=False)
    if missing == "unobserved":
        return _masked_transform(runner, source, x_handles, np.asarray(H, dtype=np.float32), max_iter, tol, l1 / n,
                                 l2 / n)
    x_sum = runner.reduce(runner.map("nmf-check-X", stats_task, x_handles, list(source.bounds[:-1])),
                          "nmf-reduce-stats")[1]
    H = np.asarray(H, dtype=np.float32)
    avg, l1, l2 = _fold_in_start(source.shape, x_sum, H.shape[0], alpha_W, l1_ratio)
    return runner.map("nmf-fold-in", _fold_in_task, x_handles,
                      shared=(runner.broadcast(H), H @ H.T, avg, beta, solver, max_iter, tol, l1, l2))


def _masked_transform(runner: Runner, source: BlockSource, x_handles: list[Any], H: np.ndarray, max_iter: int,
                      tol: float, l1: float, l2: float) -> list[Any]:
    starts = list(source.bounds[:-1])
    stats = runner.map("nmf-check-X", masked_stats_task, x_handles, [None] * len(x_handles), starts)
    _, x_sum, n_observed, _ = runner.reduce(stats, "nmf-reduce-stats")
    avg = float(np.sqrt(max(x_sum, 0.0) / n_observed / H.shape[0]))
    return runner.map("nmf-fold-in", _masked_fold_in_task, x_handles, starts,
                      shared=(runner.broadcast(H), H @ H.T, avg, max_iter, tol, l1, l2))


def _masked_fold_in_task(x: Any, start: int, H: np.ndarray, HHt: np.ndarray, avg: float, max_iter: int, tol: float,
                         l1: float, l2: float) -> tuple[np.ndarray, int]:
    return masked.fold_in_rows(masked.masked_block(materialize(x), None, start), H, HHt, avg, max_sweeps=max_iter,
                               tol=tol, l1=l1, l2=l2)


def _fold_in_start(shape: tuple[int, int], x_sum: float, k: int, alpha_W: float,
                   l1_ratio: float) -> tuple[float, float, float]:
    """Flat start ``sqrt(mean(X) / k)`` and the L1 / L2 penalties on W (scikit-learn's, scaled by n_features)."""
    m, n = shape
    avg = float(np.sqrt(max(x_sum, 0.0) / (m * n) / k))
    return avg, n * alpha_W * l1_ratio, n * alpha_W * (1 - l1_ratio)


def fold_in(X_new: Any, H: np.ndarray, *, beta_loss: str | float = "frobenius", solver: str | None = None,
            max_iter: int = 200, tol: float = 1e-4, alpha_W: float = 0.0, l1_ratio: float = 0.0,
            missing: str = "zero") -> np.ndarray:
    """Coefficients W (r, k) of new rows X_new (r, n) with H (k, n) fixed.

    Uses HALS for the Frobenius loss and multiplicative updates otherwise (or ``solver``);
    ``alpha_W`` and ``l1_ratio`` regularize W as in the fit. X_new may be numpy,
    scipy.sparse, a Dask array, a Matrix or a store path. ``missing="unobserved"``: only stored
    (sparse) or non-NaN (dense) entries of X_new are data, as in a masked fit.
    """
    H = np.asarray(H, dtype=np.float32)
    if H.ndim != 2:
        raise ValueError(f"H must be 2-D (n_components, n_features), got shape {H.shape}")
    beta = kernels.beta_to_float(beta_loss)
    solver = solver or ("hals" if beta == 2.0 else "mu")
    if not sp.issparse(X_new) and not isinstance(X_new, (Matrix, da.Array, zarr.Array, str, Path)):
        X_new = np.atleast_2d(np.asarray(X_new, dtype=np.float32))
    if missing == "zero" and (sp.issparse(X_new) or isinstance(X_new, np.ndarray)) and active_client() is None \
            and (X_new.nnz * 8 if sp.issparse(X_new) else X_new.nbytes) < SMALL_INPUT_BYTES:
        # a few rows (a query): the block kernel in this thread, without a runner's set-up
        X_new = sp.csr_array(X_new) if sp.issparse(X_new) else X_new
        if X_new.shape[1] != H.shape[1]:
            raise ValueError(f"X_new has {X_new.shape[1]} columns but H has {H.shape[1]}")
        x_sum = stats_task(X_new, 0)[1]
        avg, l1, l2 = _fold_in_start(X_new.shape, x_sum, H.shape[0], alpha_W, l1_ratio)
        return _fold_in_task(X_new, H, H @ H.T, avg, beta, solver, max_iter, tol, l1, l2)[0]
    runner = make_runner()
    try:
        source = as_source(X_new, n_blocks_hint=_blocks_hint(runner, X_new))
        if source.shape[1] != H.shape[1]:
            raise ValueError(f"X_new has {source.shape[1]} columns but H has {H.shape[1]}")
        results = transform_blocks(runner, source, H, beta, solver, max_iter, tol, alpha_W, l1_ratio, missing)
        return np.concatenate(runner.gather(runner.select(results, 0, "nmf-fold-in-W")))
    finally:
        runner.close()


# --------------------------------------------------------------------------- helpers


def write_w_store(runner: Runner, w_handles: list[Any], bounds: tuple[int, ...], path: Location, k: int) -> None:
    """Write W blocks to a new Zarr group at ``path`` (array ``W``), atomically."""
    with atomic_path(path, overwrite=True) as tmp:
        zarr.open_group(tmp, mode="w", zarr_format=3)
        write_w(runner, w_handles, bounds, tmp, k)


SMALL_INPUT_BYTES = 16 * 2**20


def _blocks_hint(runner: Runner, X: Any) -> int:
    """One block per worker thread (each block returns a k x n term to reduce, so fewer blocks
    mean less traffic; stores still split by their ~32 MiB chunks), except that small in-memory
    input stays one block in-process (splitting it gains nothing and changes float rounding)."""
    if not runner.in_process:
        return runner.n_workers
    nbytes = X.nnz * 8 if sp.issparse(X) else getattr(X, "nbytes", None)
    if isinstance(X, (list, tuple)) or (nbytes is not None and not isinstance(X, (da.Array, zarr.Array))
                                        and nbytes < SMALL_INPUT_BYTES):
        return 1
    return runner.n_workers


def _weight_source(entry_weights: Any) -> BlockSource:
    """Entry weights as a block source (its row blocks are set to X's by the driver)."""
    if isinstance(entry_weights, IN_MEMORY_TYPES) and not sp.issparse(entry_weights):
        entry_weights = check_array(entry_weights, dtype=np.float32)
    return as_source(entry_weights)


def _float_dtype(X: Any) -> np.dtype:
    """The dtype results are returned in: X's if float64 or float32, float64 for other
    in-memory input (as scikit-learn's validation converts it), float32 for stores."""
    dtype = getattr(X, "dtype", None)
    if dtype in (np.float32, np.float64):
        return np.dtype(dtype)
    return np.dtype(np.float64 if isinstance(X, IN_MEMORY_TYPES) or sp.issparse(X) else np.float32)


def _has_zeros(source: BlockSource) -> bool:
    """Whether X has a zero entry: implicit zeros of sparse input, or a zero stored value of
    in-memory input. Out-of-core dense input is checked by the fit's first pass over X."""
    if source.is_sparse and source.nnz < source.shape[0] * source.shape[1]:
        return True
    if source.array is None:
        return False
    values = np.asarray(source.array.data if source.is_sparse else source.array)
    return bool(values.size) and float(np.nanmin(values)) == 0


def check_init_factor(A: Any, shape: tuple[int | str, int | str], whom: str) -> np.ndarray:
    """scikit-learn's checks of a user-given factor, with its messages: 2-D, finite, the
    expected shape ("auto" accepts any), non-negative, not all zero."""
    A = check_array(A)
    for axis, (name, expected) in enumerate((("first", shape[0]), ("second", shape[1]))):
        if expected != "auto" and A.shape[axis] != expected:
            raise ValueError(f"Array with wrong {name} dimension passed to {whom}. Expected {expected}, "
                             f"but got {A.shape[axis]}.")
    check_non_negative(A, whom)
    if np.max(A) == 0:
        raise ValueError(f"Array passed to {whom} is full of zeros.")
    return A


def _check_custom(W0: Any, H0: Any, m: int, n: int, n_components: int | str | None, dtype: np.dtype) -> int:
    """Check custom W (m, k) and H (k, n) as scikit-learn does; return k."""
    if W0 is None or H0 is None:
        raise ValueError("init='custom' needs both W and H")
    k = n if n_components is None else n_components
    H0 = check_init_factor(H0, (k, n), "NMF (input H)")
    k = H0.shape[0]
    W0 = check_init_factor(W0, (m, k), "NMF (input W)")
    if H0.dtype != dtype or W0.dtype != dtype:
        raise TypeError(f"H and W should have the same dtype as X. Got H.dtype = {H0.dtype} and "
                        f"W.dtype = {W0.dtype}.")
    return k

