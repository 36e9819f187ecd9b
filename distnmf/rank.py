"""Choosing the rank by cross-validation: hold out observed entries, fit masked NMF on the rest.

For each replicate a fraction of X's observed entries (sparse: stored entries; dense: non-NaN
entries) is held out, chosen by a hash of (seed, row, column) so that any process reading any
row block agrees on the split without storing it. Every row and every column keeps its
"anchor" entry (the one with the largest hash) in training, so each keeps data. For every rank
``k`` and replicate, :class:`distnmf.NMF` with ``missing="unobserved"`` is fitted on the
training entries on the cluster (the fits run concurrently) and its RMSE on the held-out
entries is measured in one more pass over the blocks. The report names the rank of the lowest
mean test RMSE and the smallest rank within one standard error of it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from distnmf.kernels import Block
from distnmf.source import BlockRef, BlockSource, as_float32, as_source, materialize
from distnmf.store import open_matrix
from distnmf.validation import check_rank

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def entry_hash(rows: np.ndarray, cols: np.ndarray, n_cols: int, seed: int) -> np.ndarray:
    """A uniform value in [0, 1) per entry (row, col), from splitmix64 of (seed, row * n_cols + col)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) * np.uint64(n_cols) + cols.astype(np.uint64) + np.uint64(seed + 1) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _observed_entries(block: Block, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Global rows and columns of a block's observed entries (sparse: stored; dense: non-NaN)."""
    if not isinstance(block, np.ndarray):  # sparse
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        return rows + start, block.indices
    rows, cols = np.nonzero(~np.isnan(block))
    return rows + start, cols


def column_anchors(block: Block, start: int, seeds: Sequence[int]) -> np.ndarray:
    """Per replicate, each column's largest entry hash in the block: shape (len(seeds), n), -1 if none."""
    rows, cols = _observed_entries(block, start)
    out = np.full((len(seeds), block.shape[1]), -1.0)
    for r, seed in enumerate(seeds):
        np.maximum.at(out[r], cols, entry_hash(rows, cols, block.shape[1], seed))
    return out


@dataclass(frozen=True)
class HoldOut:
    """One replicate's split: an entry is held out when its hash is below ``fraction`` and it is
    neither its row's nor its column's anchor (``column_anchor``, shape (n,))."""

    seed: int
    fraction: float
    column_anchor: np.ndarray

    def split(self, block: Block, start: int) -> tuple[Block, np.ndarray, np.ndarray, np.ndarray]:
        """(training block, held-out local rows, columns, values) of a float32 row block."""
        rows, cols = _observed_entries(block, start)
        u = entry_hash(rows, cols, block.shape[1], self.seed)
        row_anchor = np.full(block.shape[0], -1.0)
        np.maximum.at(row_anchor, rows - start, u)
        held = (u < self.fraction) & (u != row_anchor[rows - start]) & (u != self.column_anchor[cols])
        local = rows[held] - start
        if sp.issparse(block):
            keep = ~held
            train = sp.csr_array((block.data[keep], (rows[keep] - start, cols[keep])), shape=block.shape)
            return train, local, cols[held], block.data[held]
        values = block[local, cols[held]]
        train = block.copy()
        train[local, cols[held]] = np.nan
        return train, local, cols[held], values


@dataclass(frozen=True)
class TrainingReader:
    """Picklable reader of the training entries of rows ``start:stop`` (held-out ones removed)."""

    read: Any
    holdout: HoldOut

    def __call__(self, start: int, stop: int) -> Block:
        return self.holdout.split(as_float32(self.read(start, stop)), start)[0]


@dataclass(frozen=True)
class _ArrayRows:
    """Reader of rows of an in-memory array (pickled with each task on a cluster)."""

    array: Any

    def __call__(self, start: int, stop: int) -> Block:
        return self.array[start:stop]


def _anchor_task(x: Any, start: int, seeds: Sequence[int]) -> np.ndarray:
    return column_anchors(as_float32(materialize(x)), start, seeds)


def _test_error_task(x: Any, W: np.ndarray, start: int, H: np.ndarray, holdout: HoldOut) -> tuple[float, float, float]:
    """(Σ held-out squared error, held-out count, training count) of one row block."""
    train, rows, cols, values = holdout.split(as_float32(materialize(x)), start)
    predicted = np.einsum("ij,ji->i", W[rows], H[:, cols])
    residual = values.astype(np.float64) - predicted
    n_train = int((~np.isnan(train)).sum()) if isinstance(train, np.ndarray) else train.nnz
    return float(residual @ residual), float(len(values)), float(n_train)


# --------------------------------------------------------------------------- the report


@dataclass
class RankReport:
    """Held-out and training RMSE per rank and replicate, arrays of shape (len(ks), replicates)."""

    ks: list[int]
    test_rmse: np.ndarray
    train_rmse: np.ndarray
    test_fraction: float
    n_test: list[int] = field(default_factory=list)  # held-out entries per replicate

    @property
    def best_k(self) -> int:
        """The rank with the lowest mean held-out RMSE."""
        return self.ks[int(np.argmin(self.test_rmse.mean(axis=1)))]

    @property
    def one_se_k(self) -> int:
        """The smallest rank whose mean held-out RMSE is within one standard error of the best."""
        means, se = self.test_rmse.mean(axis=1), self._standard_error()
        best = int(np.argmin(means))
        return min(k for k, mean in zip(self.ks, means) if mean <= means[best] + se[best])

    def _standard_error(self) -> np.ndarray:
        replicates = self.test_rmse.shape[1]
        if replicates < 2:
            return np.zeros(len(self.ks))
        return self.test_rmse.std(axis=1, ddof=1) / math.sqrt(replicates)

    @property
    def table(self) -> list[dict]:
        """One row per rank: test RMSE mean, standard deviation and standard error; train RMSE."""
        se = self._standard_error()
        ddof = 1 if self.test_rmse.shape[1] > 1 else 0
        return [{"n_components": k,
                 "test_rmse": float(self.test_rmse[i].mean()), "test_rmse_std": float(self.test_rmse[i].std(ddof=ddof)),
                 "test_rmse_se": float(se[i]),
                 "train_rmse": float(self.train_rmse[i].mean()),
                 "train_rmse_std": float(self.train_rmse[i].std(ddof=ddof))}
                for i, k in enumerate(self.ks)]

    def to_dict(self) -> dict:
        """JSON-ready: best_k, one_se_k, test_fraction, the table and every replicate's RMSE."""
        return {"best_k": self.best_k, "one_se_k": self.one_se_k, "test_fraction": self.test_fraction,
                "n_test": self.n_test, "table": self.table, "test_rmse": self.test_rmse.tolist(),
                "train_rmse": self.train_rmse.tolist()}

    def plot(self, path: str | os.PathLike) -> Path:
        """Held-out and training RMSE against rank (mean and range over replicates) as a PNG."""
        from distnmf.plots import cv_rank_plot

        return cv_rank_plot(self, path)


# --------------------------------------------------------------------------- select_rank


def select_rank(X: Any, ks: Sequence[int], *, test_fraction: float = 0.05, replicates: int = 3,
                random_state: int | None = 0, client: Any = None, **nmf_params: Any) -> RankReport:
    """Cross-validate the rank of a masked NMF on held-out entries of X.

    Parameters
    ----------
    X : store path, :class:`Matrix`, numpy (NaN = missing), scipy.sparse (stored entries are
        the data) or Dask array, of shape (m, n).
    ks : ranks to compare.
    test_fraction : fraction of the observed entries held out per replicate (rows and columns
        always keep at least one training entry, so slightly fewer may be held out).
    replicates : independent splits per rank; their spread gives the standard error.
    random_state : seed of the splits and of the fits.
    client : a ``distributed.Client`` (default: the active one; False: this process); the
        len(ks) x replicates fits run concurrently on it, as many at once as its threads and
        memory allow.
    **nmf_params : other :class:`distnmf.NMF` parameters (``max_iter``, ``tol``, ``alpha_W``...).

    Returns a :class:`RankReport`.
    """
    from distnmf.dask_context import active_client, cluster_capacity
    from distnmf.runner import DaskRunner, LocalRunner

    ks = _check_ks(ks, X)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if replicates < 1:
        raise ValueError(f"replicates must be >= 1, got {replicates}")
    for name in ("n_components", "missing", "checkpoint", "resume", "W_store"):
        if name in nmf_params:
            raise ValueError(f"select_rank sets {name} itself; do not pass it")
    client = active_client(client)

    def make_runner() -> LocalRunner | DaskRunner:
        return LocalRunner() if client is None else DaskRunner(client)

    base = as_source(X, n_blocks_hint=1 if client is None else cluster_capacity(client).threads)
    read = base.reader if base.array is None else _ArrayRows(base.array)
    seed0 = 0 if random_state is None else int(random_state)
    seeds = [seed0 * 1000 + r for r in range(replicates)]
    holdouts = _holdouts(make_runner(), base, read, seeds, test_fraction)
    jobs = [(i, r) for i in range(len(ks)) for r in range(replicates)]

    def run(job: tuple[int, int]) -> tuple[float, float, int]:
        i, r = job
        runner = make_runner()
        try:
            return _fit_and_test(runner, base, read, holdouts[r], ks[i], seed0 + r, nmf_params)
        finally:
            runner.close()

    parallel = parallel_fits(client, base.nbytes, len(jobs))
    if parallel == 1:
        results = [run(job) for job in jobs]
    else:
        with ThreadPoolExecutor(parallel, thread_name_prefix="distnmf-cv") as pool:
            results = list(pool.map(run, jobs))
    test = np.zeros((len(ks), replicates))
    train = np.zeros((len(ks), replicates))
    n_test = [0] * replicates
    for (i, r), (test_rmse, train_rmse, count) in zip(jobs, results):
        test[i, r], train[i, r], n_test[r] = test_rmse, train_rmse, count
    return RankReport(ks, test, train, test_fraction, n_test)


def _check_ks(ks: Sequence[int], X: Any) -> list[int]:
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks is empty; give at least one rank, e.g. [2, 4, 8]")
    shape = open_matrix(X).shape if isinstance(X, (str, os.PathLike)) else getattr(X, "shape", None)
    for k in ks:
        if shape is None:
            if k < 1:
                raise ValueError(f"rank must be >= 1, got {k}")
        else:
            check_rank(k, shape, "rank")
    return sorted(set(ks))


def _holdouts(runner: Any, base: BlockSource, read: Any, seeds: list[int], fraction: float) -> list[HoldOut]:
    """Each replicate's split: one pass over X finds every column's anchor entry."""
    refs = [BlockRef(read, a, b) for a, b in zip(base.bounds[:-1], base.bounds[1:])]
    try:
        anchors = np.max(runner.gather(runner.map("cv-anchors", _anchor_task, refs, list(base.bounds[:-1]),
                                                  shared=(seeds,))), axis=0)
    finally:
        runner.close()
    return [HoldOut(seed, fraction, anchors[r]) for r, seed in enumerate(seeds)]


def _fit_and_test(runner: Any, base: BlockSource, read: Any, holdout: HoldOut, k: int, seed: int,
                  nmf_params: dict) -> tuple[float, float, int]:
    """Fit masked NMF of rank k on the training entries; (test RMSE, train RMSE, held-out count)."""
    from distnmf.driver import fit_blocks
    from distnmf.estimator import NMF

    train = replace(base, array=None, reader=TrainingReader(read, holdout), matrix=None)
    model = NMF(n_components=k, missing="unobserved", random_state=seed, **nmf_params)
    model._validate_params()
    config = model._config(train, None, None)
    result = fit_blocks(runner, train, config)
    refs = [BlockRef(read, a, b) for a, b in zip(base.bounds[:-1], base.bounds[1:])]
    test_sq, n_test, n_train = runner.reduce(runner.map(
        "cv-test-error", _test_error_task, refs, result.w_handles, list(base.bounds[:-1]),
        shared=(runner.broadcast(result.H), holdout)), "cv-reduce-test")
    if n_test == 0:
        raise ValueError(f"no entry was held out (test_fraction={holdout.fraction} of {int(n_train)} observed "
                         f"entries); raise test_fraction")
    return math.sqrt(test_sq / n_test), result.reconstruction_err / math.sqrt(n_train), int(n_test)


def rank_sweep(source: Any, ks: Sequence[int], **nmf_params: Any) -> list[dict]:
    """Fit NMF once per rank in ``ks`` and report how well each explains X.

    Returns one dict per rank, in the order given: ``{"n_components", "reconstruction_err",
    "relative_error" (reconstruction_err / ||X||_F), "n_iter"}``. With an active
    ``distributed.Client`` several fits run at once (up to the cluster's thread count, and only
    as many copies of X as fit in 40% of the cluster's memory); otherwise they run one by one.
    """
    from distnmf.dask_context import active_client
    from distnmf.estimator import NMF
    from distnmf.source import as_source

    if isinstance(source, (str, os.PathLike)):
        source = open_matrix(source)
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks is empty; give at least one n_components value, e.g. [5, 10, 20]")
    info = as_source(source)
    for k in ks:
        check_rank(k, info.shape)
    if "n_components" in nmf_params:
        raise ValueError("pass the ranks through ks, not n_components")

    def fit(k: int) -> dict:
        model = NMF(n_components=k, **nmf_params).fit(source)
        relative = model.error_history_[-1] if model.error_history_ else None
        return {"n_components": k, "reconstruction_err": float(model.reconstruction_err_),
                "relative_error": None if relative is None else float(relative), "n_iter": int(model.n_iter_)}

    parallel = parallel_fits(active_client(), info.nbytes, len(ks))
    if parallel == 1:
        return [fit(k) for k in ks]
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="distnmf-sweep") as pool:
        return list(pool.map(fit, ks))


def parallel_fits(client: Any, x_nbytes: int, n_fits: int) -> int:
    """How many fits to run at once on ``client``: bounded by its threads and its memory."""
    from distnmf.dask_context import cluster_capacity

    if client is None:
        return 1
    capacity = cluster_capacity(client)
    by_memory = int(0.4 * capacity.memory // max(1, x_nbytes)) if capacity.memory else capacity.threads
    return max(1, min(n_fits, capacity.threads, by_memory))
