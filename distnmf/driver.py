"""The NMF iteration over row blocks: one pass over X per iteration, on any runner.

Per iteration::

    task i:  W_i <- update(W_i, X_i, H);  returns its share of H's update terms
    reduce:  the terms summed over blocks                 (tree sum on the cluster)
    driver:  H <- update(H, terms);  the error from the same terms

What the terms are and how W and H are updated is the solver's: one row of the table in
:mod:`distnmf.solvers`, chosen once per fit. W_i never leaves its worker until the caller asks
for it; the durable state (W and H every few iterations) is written by :mod:`distnmf.checkpoint`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distnmf import kernels, masked, storage
from distnmf.checkpoint import FitState, read_checkpoint, read_w, write_checkpoint
from distnmf.init import nndsvd_init, random_init
from distnmf.solvers import Mask, Problem, Solver, choose_solver, masked_stats_task, relative_loss, stats_task
from distnmf.source import BlockRef, BlockSource

if TYPE_CHECKING:
    from distnmf.runner import Runner

Callback = Callable[[int, float, float], Any]
logger = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Everything the driver needs besides the data: validated by the estimator."""

    n_components: int
    solver: str = "hals"
    beta: float = 2.0
    init: str = "nndsvda"
    max_iter: int = 200
    tol: float = 1e-4
    seed: int = 0
    l1_W: float = 0.0
    l2_W: float = 0.0
    l1_H: float = 0.0
    l2_H: float = 0.0
    verbose: int = 0
    callback: Callback | None = None
    checkpoint: str | Path | None = None
    checkpoint_every: int = 10
    resume: str | Path | None = None
    keep_in_memory: bool | str = "auto"
    missing: str = "zero"  # "unobserved": only stored (sparse) / non-NaN (dense) entries are data


@dataclass
class FitResult:
    """W as per-block handles on the runner, H (k, n), and the history of the fit."""

    w_handles: list[Any]
    H: np.ndarray
    n_iter: int
    errors: list[float] = field(default_factory=list)  # relative error after each iteration
    reconstruction_err: float = 0.0  # sqrt(2 * D_beta(X, WH)); ||X - WH||_F for Frobenius
    x_norm: float = 0.0
    converged: bool = False
    recoveries: list[tuple[int, int]] = field(default_factory=list)  # (iteration lost in, resumed after)
    timings: dict[str, float] = field(default_factory=dict)  # seconds of validation, initialisation, iterations


# --------------------------------------------------------------------------- the fit


def decide_keep_in_memory(source: BlockSource, runner: Runner, keep: bool | str) -> bool:
    """Keep X blocks in (cluster) memory when they take at most 40% of the memory available."""
    if keep != "auto":
        return bool(keep)
    if not source.out_of_core and runner.in_process:
        return True
    return source.nbytes <= 0.4 * runner.memory_limit


def fit_blocks(runner: Runner, source: BlockSource, config: FitConfig, W0: np.ndarray | None = None,
               H0: np.ndarray | None = None, weights: BlockSource | None = None) -> FitResult:
    """Factorize X ≈ W H on ``runner``; see the module docstring for the data flow.

    ``weights`` (entry weights of X's shape and row blocks) is used with ``missing="unobserved"``.
    On a cluster the fit survives lost workers: see :class:`_Fit`.
    """
    with _span(runner, "distnmf-fit"), _durable_path(runner, config) as durable:
        return _Fit(runner, source, config, durable, weights).run(W0, H0)


@contextlib.contextmanager
def _durable_path(runner: Runner, config: FitConfig) -> Iterator[storage.Location | None]:
    """Where a cluster fit keeps its durable state: the user's checkpoint, else a temporary
    directory removed afterwards. In-process fits cannot lose workers and keep none."""
    if config.checkpoint is not None or runner.in_process:
        yield storage.as_location(config.checkpoint) if config.checkpoint is not None else None
        return
    scratch = Path(tempfile.mkdtemp(prefix="distnmf-state-"))
    try:
        yield scratch / "state.zarr"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


ZEROS_WITH_BETA_LE_0 = ("When beta_loss <= 0 and X contains zeros, the solver may diverge. Please add small "
                        "values to X, or use a positive beta_loss.")  # scikit-learn's message
MAX_RECOVERIES = 3  # losses in a row without a new durable iterate before the fit gives up


class _Fit:
    """One fit: start, iterate, and on a lost worker continue from the last durable iterate.

    Nothing lives only in cluster memory that cannot be rebuilt: H and the stopping-rule state
    are on the driver, X is re-read (or re-sent) from its source, and W is written with H to
    ``durable`` after the initialisation and every ``checkpoint_every`` iterations. When a
    block result is lost (a killed or restarted worker), the driver waits for a worker (up to
    ``worker_timeout``), reads W back and redoes the iterations since that checkpoint: at most
    ``checkpoint_every - 1`` iterations are recomputed, with the same result as if no worker
    had been lost (the same tasks on the same blocks, reduced in the same order).
    """

    def __init__(self, runner: Runner, source: BlockSource, config: FitConfig, durable: storage.Location | None,
                 weights: BlockSource | None) -> None:
        self.runner, self.source, self.config, self.durable, self.weights = runner, source, config, durable, weights
        self.keep = decide_keep_in_memory(source, runner, config.keep_in_memory)
        self.start_time = time.perf_counter()
        self.marks: dict[str, float] = {}  # when validation and initialisation ended (first attempt)
        self.solver: Solver = choose_solver(config)
        self.problem: Problem | None = None  # known after the first pass over X
        self.x_mean = 0.0  # mean of X's (observed) entries, for the initialisation
        self.saved: FitState | None = None  # the state whose W is at ``saved_w``
        self.saved_w: storage.Location | None = None
        self.reported = 0  # last iteration reported: replayed iterations are not reported twice
        self.current: FitState | None = None  # the state being iterated
        self.recoveries: list[tuple[int, int]] = []

    def run(self, W0: np.ndarray | None, H0: np.ndarray | None) -> FitResult:
        recoveries = 0
        while True:
            saved_at = self.saved.iteration if self.saved else -1
            try:
                result = self._attempt(W0, H0)
                validated, initialised = self.marks["validated"], self.marks["initialised"]
                result.timings = {"validation": validated - self.start_time, "initialisation": initialised - validated,
                                  "iterations": time.perf_counter() - initialised}
                return result
            except Exception as exc:
                if not self.runner.is_lost(exc):
                    raise
                progressed = self.saved is not None and self.saved.iteration > saved_at
                recoveries = 1 if progressed else recoveries + 1
                if recoveries > MAX_RECOVERIES:
                    raise RuntimeError(f"the fit lost workers {recoveries} times in a row without reaching a new "
                                       f"checkpoint (last: {type(exc).__name__}: {exc}); a task may be killing "
                                       f"its worker, e.g. by running out of memory") from exc
                self._announce_loss(exc)
                self.runner.wait_for_workers()
                self.current = None

    def _attempt(self, W0: np.ndarray | None, H0: np.ndarray | None) -> FitResult:
        runner, source = self.runner, self.source
        x_handles = runner.load(source, self.keep)
        if self.problem is None:
            self.problem = self._validate(x_handles)
        elif self.problem.mask is not None and self.weights is not None:
            # weights kept in cluster memory may have been lost with X
            self.problem.mask.weight_handles = runner.load(replace(self.weights, bounds=source.bounds), self.keep)
        self.marks.setdefault("validated", time.perf_counter())
        if self.saved is None or self.saved_w is None:
            w_handles, state = self._initial_state(self.problem, x_handles, W0, H0)
            self._save(w_handles, state, force=True)
        else:
            state = self.saved.copy()
            w_handles = read_w(self.runner, self.saved_w, self.source.bounds)
        self.marks.setdefault("initialised", time.perf_counter())
        return self._iterate(self.problem, x_handles, w_handles, state)

    def _validate(self, x_handles: list[Any]) -> Problem:
        """The first pass over X: check every block, then the facts the solvers need.

        Refuses ``beta_loss <= 0`` with zeros in X here, before any long work, whatever X's
        storage (the estimator refuses in-memory input even earlier)."""
        runner, source, config = self.runner, self.source, self.config
        (m, n), k = source.shape, config.n_components
        mask = None
        if config.missing == "unobserved":
            mask = _observed(runner, source, x_handles, self.weights, self.keep)
            x_sq, x_sum, values, entries = mask.x_sq, mask.x_sum, int(mask.n_observed), mask.n_observed
        else:
            stats = runner.map("nmf-check-X", stats_task, x_handles, list(source.bounds[:-1]))
            x_sq, x_sum, values = runner.reduce(stats, "nmf-reduce-stats")
            entries = float(m * n)
            if config.beta <= 0 and values < entries:
                raise ValueError(ZEROS_WITH_BETA_LE_0)
        self.x_mean = x_sum / entries
        # Sweep budgets from whole-matrix sizes and non-zero (or observed) values, and a fixed count
        # per block (no per-block early stop), so the iterates depend neither on the block split nor
        # on the storage format.
        return Problem(runner, source, config, x_sq, sweeps_w=kernels.accelerated_sweeps(m, n, k, values),
                       sweeps_h=kernels.accelerated_sweeps(n, m, k, values), mask=mask)

    def _initial_state(self, problem: Problem, x_handles: list[Any], W0: np.ndarray | None,
                       H0: np.ndarray | None) -> tuple[list[Any], FitState]:
        config, runner, bounds = self.config, self.runner, self.source.bounds
        n, k = self.source.shape[1], config.n_components
        if config.resume is not None:
            state = read_checkpoint(config.resume, self.source.shape, k)
            self.saved, self.saved_w = state.copy(), storage.as_location(config.resume)
            return read_w(runner, config.resume, bounds), state
        if problem.mask is not None and not self.source.is_sparse:
            x_handles = _zero_filled(runner, x_handles)  # what initialisation sees of a masked X
        if config.init == "custom":
            assert W0 is not None and H0 is not None
            blocks = [np.ascontiguousarray(W0[a:b], dtype=np.float32) for a, b in itertools.pairwise(bounds)]
            w_handles, H = runner.map("nmf-init-W", np.asarray, blocks), np.asarray(H0, dtype=np.float32)
        elif config.init == "random":
            w_handles, H = random_init(runner, bounds, n, k, self.x_mean, config.seed)
        else:
            w_handles, H = nndsvd_init(runner, x_handles, bounds, n, k, config.init, self.x_mean, config.seed)
        state = FitState(H)
        if self.solver.needs_initial_error:
            state.error_at_init = relative_loss(problem, x_handles, w_handles, H)
        return w_handles, state

    def _save(self, w_handles: list[Any], state: FitState, force: bool = False) -> None:
        """Write the durable state (cluster fits, or a user checkpoint every ``checkpoint_every``)."""
        if self.durable is None:
            return
        if force and self.runner.in_process:  # the starting point is saved for recovery only
            return
        if not force and state.iteration % self.config.checkpoint_every:
            return
        write_checkpoint(self.runner, self.durable, w_handles, state, self.source.bounds, self.config)
        self.saved, self.saved_w = state.copy(), self.durable

    def _announce_loss(self, exc: BaseException) -> None:
        where = f"iteration {self.saved.iteration}" if self.saved else "the start"
        lost_in = self.current.iteration if self.current else 0
        self.recoveries.append((lost_in, self.saved.iteration if self.saved else 0))
        message = f"lost a worker ({type(exc).__name__}: {exc}); continuing from {where}"
        if self.config.verbose:
            print(f"[distnmf] {message}", flush=True)
        logger.warning(message)

    def _iterate(self, problem: Problem, x_handles: list[Any], w_handles: list[Any], state: FitState
                 ) -> FitResult:
        runner, config, solver = self.runner, self.config, self.solver
        H, converged = state.H, self._converged(state)
        self.current = state
        HHt = kernels.gram64(H)  # H H^T, computed once per H: for the error, then for the next W update
        while state.iteration < config.max_iter and not converged:
            state.iteration += 1
            H_handle = runner.broadcast(H)
            results = solver.update_w(problem, x_handles, w_handles, H_handle, HHt)
            new_w = runner.select(results, 0, "nmf-W")
            terms = runner.reduce(results, "nmf-reduce", part=1)
            runner.release(results)
            runner.release(w_handles)
            runner.release(H_handle)
            w_handles = new_w
            step = solver.update_h(problem, H, terms)
            H, HHt = step.H, step.HHt
            state.H = H
            if step.error is not None and state.iteration > solver.loss_lag:
                state.errors.append(step.error)
            if step.violation is not None:
                state.violations.append(step.violation)
            converged = self._converged(state)
            if solver.exact_error is not None and (converged or state.iteration >= config.max_iter):
                # the float32 Gram-form error is inexact near zero: the final one comes from an exact pass
                state.errors[-1] = solver.exact_error(problem, x_handles, w_handles, H)
            self._report(state.iteration - solver.loss_lag, state.errors)
            self._save(w_handles, state)
        if len(state.errors) < state.iteration:  # the final loss is known one pass late
            state.errors.append(relative_loss(problem, x_handles, w_handles, H))
            self._report(state.iteration, state.errors)
        reconstruction_err = state.errors[-1] * problem.x_norm if state.errors else float("nan")
        return FitResult(w_handles, H, state.iteration, state.errors, reconstruction_err,
                         x_norm=math.sqrt(problem.x_sq), converged=converged, recoveries=self.recoveries)

    def _converged(self, state: FitState) -> bool:
        tol = self.config.tol
        return tol > 0 and self.solver.converged(tol, state.violations, state.errors, state.error_at_init)

    def _report(self, iteration: int, errors: list[float]) -> None:
        if not errors or iteration <= self.reported:
            return
        self.reported = iteration
        elapsed = time.perf_counter() - self.start_time
        if self.config.verbose:
            print(f"[distnmf] iteration {iteration:4d}  relative error {errors[-1]:.6f}  {elapsed:7.2f}s", flush=True)
        if self.config.callback is not None:
            self.config.callback(iteration, errors[-1], elapsed)


def _observed(runner: Runner, source: BlockSource, x_handles: list[Any], weights: BlockSource | None,
              keep: bool) -> Mask:
    """Validate X (and the weights) for a masked fit; count observed entries per column."""
    if weights is None:
        weight_handles = [None] * source.n_blocks
    else:
        if weights.shape != source.shape:
            raise ValueError(f"entry_weights has shape {weights.shape} but X has shape {source.shape}")
        weight_handles = runner.load(replace(weights, bounds=source.bounds), keep)
    stats = runner.map("nmf-check-X", masked_stats_task, x_handles, weight_handles, list(source.bounds[:-1]))
    x_sq, x_sum, n_observed, column_counts = runner.reduce(stats, "nmf-reduce-stats")
    if column_counts.min() == 0:
        column = int(np.argmin(column_counts))
        raise ValueError(f"column {column} of X has no observed entry (missing='unobserved'); a masked fit cannot "
                         f"estimate it: drop rows and columns without data before fitting")
    return Mask(weight_handles, column_counts, n_observed, x_sq, x_sum)


@dataclass(frozen=True)
class _ZeroFilledReader:
    """Picklable reader of rows with NaN set to 0 (what initialisation sees of a masked X)."""

    read: Any

    def __call__(self, start: int, stop: int) -> Any:
        return masked.zero_filled(self.read(start, stop))


def _zero_filled(runner: Runner, x_handles: list[Any]) -> list[Any]:
    if isinstance(x_handles[0], BlockRef):
        return [BlockRef(_ZeroFilledReader(h.read), h.start, h.stop) for h in x_handles]
    return runner.map("nmf-zero-fill", masked.zero_filled, x_handles)


def _span(runner: Runner, name: str) -> contextlib.AbstractContextManager:
    """A ``distributed.span`` grouping the fit's tasks on the dashboard (no-op in-process)."""
    if runner.in_process:
        return contextlib.nullcontext()
    from distributed import span

    return span(name)
