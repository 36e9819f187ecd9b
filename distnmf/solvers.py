"""The solver table: how each solver updates W on the row blocks and H on the driver.

A fit picks one row of :data:`SOLVERS` once (:func:`choose_solver`); the driver's iteration
(:mod:`distnmf.driver`) then runs the same steps for every solver::

    task i:  W_i <- solver.w_task(X_i, W_i, H, ...)        returns (W_i, terms_i)
    driver:  H <- solver.update_h(Σ terms_i)               appends the error (and violation)

What differs between solvers, and only here:

- ``hals`` (Frobenius): terms are W_iᵀ X_i (k, n), W_iᵀ W_i (k, k) and the projected-gradient
  violation; H by HALS sweeps; the error from the Gram terms, the final one from an exact pass.
- ``mu`` with beta = 2: the same terms, H by a multiplicative update.
- ``mu`` with another beta: terms are the MU numerator and denominator for H and the block's
  divergence at the previous iterate, so the loss is known one iteration late (``loss_lag``).
- ``masked`` (``missing="unobserved"``, :mod:`distnmf.masked`): terms are every column's normal
  equations, Σ_r c_rj w_r w_rᵀ (n, k, k) and Σ_r c_rj x_rj w_r (n, k), solved for H.

Block tasks are pure: numpy in, numpy out, on any runner.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from distnmf import kernels, masked
from distnmf.source import BlockSource, materialize
from distnmf.validation import check_block

if TYPE_CHECKING:
    from distnmf.driver import FitConfig
    from distnmf.runner import Runner


# --------------------------------------------------------------------------- block tasks


def stats_task(x: Any, start: int) -> tuple[float, float, int]:
    """Validate a block (finite, non-negative) and return (||X_i||², sum X_i, non-zeros of X_i)."""
    block = materialize(x)
    check_block(block, start)
    return kernels.block_stats(block)


def masked_stats_task(x: Any, weights: Any, start: int) -> tuple[float, float, float, np.ndarray]:
    """Validate a block (NaN allowed in dense X) and return :func:`masked.observed_stats`."""
    block = materialize(x)
    check_block(block, start, allow_nan=not sp.issparse(block))
    if weights is not None:
        check_block(materialize(weights), start, where="entry_weights")
    return masked.observed_stats(masked.masked_block(block, materialize(weights), start), start)


def _hals_task(x: Any, W: np.ndarray, H: np.ndarray, HHt: np.ndarray, sweeps: int, l1: float,
               l2: float) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, float]]:
    block = materialize(x)
    W, violation = kernels.hals_update_block(block, W, H, HHt, max_sweeps=sweeps, l1=l1, l2=l2)
    # float32 in transit: the k x n term is the bulk of each iteration's network traffic
    return W, (kernels.wt_x(W, block), (W.T @ W).astype(np.float64), violation)


def _mu_frobenius_task(x: Any, W: np.ndarray, H: np.ndarray, HHt: np.ndarray, sweeps: int, l1: float,
                       l2: float) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    block = materialize(x)
    W = kernels.mu_update_block(block, W, H, 2.0, HHt=HHt, l1=l1, l2=l2)
    return W, (kernels.wt_x(W, block), (W.T @ W).astype(np.float64))


def _mu_beta_task(x: Any, W: np.ndarray, H: np.ndarray, beta: float, l1: float,
                  l2: float) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, float]]:
    block = materialize(x)
    previous_loss = kernels.beta_divergence_block(block, W, H, beta)
    W = kernels.mu_update_block(block, W, H, beta, l1=l1, l2=l2)
    numerator, denominator = kernels.mu_h_terms(block, W, H, beta)
    return W, (numerator.astype(np.float64), denominator, previous_loss)


def _masked_task(x: Any, weights: Any, start: int, W: np.ndarray, H: np.ndarray, HHt: np.ndarray,
                 sweeps: int, l1: float, l2: float) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, float]]:
    """Masked HALS update of W_i; returns its share of H's normal equations and the violation.
    ``l1`` and ``l2`` are per observed entry (a row's penalty scales with its observed count)."""
    block = masked.masked_block(materialize(x), materialize(weights), start)
    grams, rhs = masked.row_equations(block, H, HHt)
    counts = block.row_counts()
    rhs, grams = masked.penalized(rhs, grams, l1 * counts if l1 else None, l2 * counts if l2 else None)
    W, violation = masked.update_rows(W, rhs, grams, max_sweeps=sweeps)
    XtW, column_grams = masked.column_terms(block, W)
    return W, (XtW, column_grams, violation)


def divergence_task(x: Any, W: np.ndarray, H: np.ndarray, beta: float) -> float:
    """D_beta(X_i, W_i H) of one block."""
    return kernels.beta_divergence_block(materialize(x), W, H, beta)


def _residual_task(x: Any, W: np.ndarray, H: np.ndarray) -> float:
    return kernels.residual_sq_block(materialize(x), W, H)


def _masked_residual_task(x: Any, weights: Any, start: int, W: np.ndarray, H: np.ndarray) -> float:
    return masked.residual_sq(masked.masked_block(materialize(x), materialize(weights), start), W, H)


# --------------------------------------------------------------------------- what a fit knows


@dataclass
class Mask:
    """What a masked fit carries besides X: entry weights and the observed counts."""

    weight_handles: list[Any]
    column_counts: np.ndarray  # (n,) observed entries per column
    n_observed: float
    x_sq: float  # Σ c x² over observed entries
    x_sum: float


@dataclass
class Problem:
    """The fixed facts of one fit that the solvers read: the runner, X's blocks and norms, the
    sweep budgets. ``mask`` is set for masked fits only."""

    runner: Runner
    source: BlockSource
    config: FitConfig
    x_sq: float  # ||X||² (Σ c x² over observed entries when masked)
    sweeps_w: int
    sweeps_h: int
    mask: Mask | None = None

    @property
    def x_norm(self) -> float:
        return math.sqrt(self.x_sq) or 1.0

    @property
    def starts(self) -> list[int]:
        return list(self.source.bounds[:-1])


@dataclass
class Step:
    """What one H update produced: the new H, H Hᵀ (float64), and the error and violation it
    makes known (None when not known this iteration)."""

    H: np.ndarray
    HHt: np.ndarray
    error: float | None
    violation: float | None = None


# --------------------------------------------------------------------------- the solvers


def _gram_w(problem: Problem, x_handles: list[Any], w_handles: list[Any], H_handle: Any, HHt: np.ndarray,
            task: Callable[..., Any]) -> list[Any]:
    config = problem.config
    return problem.runner.map("nmf-update-W", task, x_handles, w_handles,
                              shared=(H_handle, HHt.astype(np.float32), problem.sweeps_w, config.l1_W,
                                      config.l2_W))


def _hals_w(problem: Problem, x_handles: list[Any], w_handles: list[Any], H_handle: Any,
            HHt: np.ndarray) -> list[Any]:
    return _gram_w(problem, x_handles, w_handles, H_handle, HHt, _hals_task)


def _mu_frobenius_w(problem: Problem, x_handles: list[Any], w_handles: list[Any], H_handle: Any,
                    HHt: np.ndarray) -> list[Any]:
    return _gram_w(problem, x_handles, w_handles, H_handle, HHt, _mu_frobenius_task)


def _mu_beta_w(problem: Problem, x_handles: list[Any], w_handles: list[Any], H_handle: Any,
               HHt: np.ndarray) -> list[Any]:
    config = problem.config
    return problem.runner.map("nmf-update-W", _mu_beta_task, x_handles, w_handles,
                              shared=(H_handle, config.beta, config.l1_W, config.l2_W))


def _masked_w(problem: Problem, x_handles: list[Any], w_handles: list[Any], H_handle: Any,
              HHt: np.ndarray) -> list[Any]:
    config, n = problem.config, problem.source.shape[1]
    assert problem.mask is not None
    return problem.runner.map("nmf-update-W", _masked_task, x_handles, problem.mask.weight_handles, problem.starts,
                              w_handles, shared=(H_handle, HHt.astype(np.float32), problem.sweeps_w,
                                                 config.l1_W / n, config.l2_W / n))


def _gram_error(problem: Problem, WtX: np.ndarray, WtW: np.ndarray, H: np.ndarray, HHt: np.ndarray) -> float:
    return math.sqrt(kernels.frobenius_error_sq(problem.x_sq, WtX, WtW, H, HHt)) / problem.x_norm


def _hals_h(problem: Problem, H: np.ndarray, terms: Any) -> Step:
    WtX, WtW, violation_w = terms
    config = problem.config
    H, violation_h = kernels.hals_update_h(H, WtX, WtW, max_sweeps=problem.sweeps_h, l1=config.l1_H,
                                           l2=config.l2_H)
    HHt = kernels.gram64(H)
    return Step(H, HHt, _gram_error(problem, WtX, WtW, H, HHt), violation_w + violation_h)


def _mu_frobenius_h(problem: Problem, H: np.ndarray, terms: Any) -> Step:
    WtX, WtW = terms
    config = problem.config
    H = kernels.mu_update_h(H, WtX, WtW @ H.astype(np.float64), 2.0, l1=config.l1_H, l2=config.l2_H)
    HHt = kernels.gram64(H)
    return Step(H, HHt, _gram_error(problem, WtX, WtW, H, HHt))


def _mu_beta_h(problem: Problem, H: np.ndarray, terms: Any) -> Step:
    numerator, denominator, previous = terms
    config = problem.config
    H = kernels.mu_update_h(H, numerator, denominator, config.beta, l1=config.l1_H, l2=config.l2_H)
    return Step(H, kernels.gram64(H), loss_to_error(previous, problem.x_norm))


def _masked_h(problem: Problem, H: np.ndarray, terms: Any) -> Step:
    """H from the reduced normal equations; the loss Σ c (x - wh)² follows from them."""
    XtW, column_grams, violation_w = terms
    config, mask, m = problem.config, problem.mask, problem.source.shape[0]
    assert mask is not None
    n, k = XtW.shape
    grams = column_grams.reshape(n, k, k)
    counts = mask.column_counts
    rhs, penalized_grams = masked.penalized(XtW, grams, config.l1_H / m * counts if config.l1_H else None,
                                            config.l2_H / m * counts if config.l2_H else None)
    Ht, violation_h = masked.update_rows(H.T, rhs, penalized_grams, max_sweeps=problem.sweeps_h, inner_tol=0.1)
    H = np.ascontiguousarray(Ht.T)
    error = math.sqrt(masked.masked_loss_sq(problem.x_sq, Ht, XtW, grams)) / problem.x_norm
    return Step(H, kernels.gram64(H), error, violation_w + violation_h)


def _exact_error(problem: Problem, x_handles: list[Any], w_handles: list[Any], H: np.ndarray) -> float:
    """||X - W H|| / ||X|| from one pass in float64 (the Gram form loses everything below ~1e-7)."""
    runner = problem.runner
    residuals = runner.map("nmf-residual", _residual_task, x_handles, w_handles, shared=(runner.broadcast(H),))
    return math.sqrt(runner.reduce(residuals, "nmf-reduce-residual")) / problem.x_norm


def _masked_exact_error(problem: Problem, x_handles: list[Any], w_handles: list[Any], H: np.ndarray) -> float:
    runner, mask = problem.runner, problem.mask
    assert mask is not None
    residuals = runner.map("nmf-residual", _masked_residual_task, x_handles, mask.weight_handles, problem.starts,
                           w_handles, shared=(runner.broadcast(H),))
    return math.sqrt(runner.reduce(residuals, "nmf-reduce-residual")) / problem.x_norm


def relative_loss(problem: Problem, x_handles: list[Any], w_handles: list[Any], H: np.ndarray) -> float:
    """sqrt(2 D_beta(X, W H)) / ||X||, from one pass over the blocks."""
    runner = problem.runner
    loss = runner.reduce(runner.map("nmf-loss", divergence_task, x_handles, w_handles,
                                    shared=(runner.broadcast(H), problem.config.beta)), "nmf-reduce-loss")
    return loss_to_error(loss, problem.x_norm)


def loss_to_error(loss: float, x_norm: float) -> float:
    """sqrt(2 D) / ||X||; a loss that is not finite (a diverging fit) stays NaN, never 0."""
    if not math.isfinite(loss):
        return float("nan")
    return math.sqrt(2 * max(loss, 0.0)) / x_norm


# --------------------------------------------------------------------------- stopping rules

CHECK_EVERY = 10


def hals_converged(tol: float, violations: list[float], errors: list[float], error_at_init: float) -> bool:
    """scikit-learn cd's rule, so ``tol`` means what it means there: the projected-gradient
    violation has fallen below ``tol`` times the first iteration's, *and* over the last 10
    iterations the error decreased by less than ``tol`` times the first iteration's error.

    The second condition is distnmf's: several inner sweeps per iteration shrink the violation
    much faster than scikit-learn's single cd sweep, and on data near its noise floor the
    violation rule alone stopped at twice scikit-learn's error (24,000 x 600 gamma-planted, 1%
    noise: 14 iterations, 0.0188 vs 0.0081).
    """
    if not violations or (violations[0] != 0 and violations[-1] > tol * violations[0]):
        return False
    return violations[0] == 0 or (len(errors) > CHECK_EVERY and
                                  errors[-1 - CHECK_EVERY] - errors[-1] < tol * errors[0])


def mu_converged(tol: float, violations: list[float], errors: list[float], error_at_init: float) -> bool:
    """scikit-learn mu's rule: every 10 iterations, the error decreased by less than ``tol``
    times the initial error since the last check."""
    if len(errors) < CHECK_EVERY + 1 or len(errors) % CHECK_EVERY:
        return False
    return (errors[-1 - CHECK_EVERY] - errors[-1]) / max(error_at_init, 1e-300) < tol


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Solver:
    """One row of the solver table (see the module docstring)."""

    name: str
    update_w: Callable[[Problem, list[Any], list[Any], Any, np.ndarray], list[Any]]
    update_h: Callable[[Problem, np.ndarray, Any], Step]
    converged: Callable[[float, list[float], list[float], float], bool]
    # the final error from an exact pass (the per-iteration one comes from float32 Gram terms)
    exact_error: Callable[[Problem, list[Any], list[Any], np.ndarray], float] | None = None
    loss_lag: int = 0  # iterations by which the reported loss trails the iterate
    needs_initial_error: bool = False  # the stopping rule is relative to the starting point's error


SOLVERS: dict[str, Solver] = {
    "hals": Solver("hals", _hals_w, _hals_h, hals_converged, exact_error=_exact_error),
    "mu-frobenius": Solver("mu-frobenius", _mu_frobenius_w, _mu_frobenius_h, mu_converged,
                           exact_error=_exact_error, needs_initial_error=True),
    "mu-beta": Solver("mu-beta", _mu_beta_w, _mu_beta_h, mu_converged, loss_lag=1, needs_initial_error=True),
    "masked": Solver("masked", _masked_w, _masked_h, hals_converged, exact_error=_masked_exact_error),
}


def choose_solver(config: FitConfig) -> Solver:
    """The row of :data:`SOLVERS` for a fit's solver, loss and missing-value mode."""
    if config.missing == "unobserved":
        return SOLVERS["masked"]
    if config.solver == "hals":
        return SOLVERS["hals"]
    return SOLVERS["mu-frobenius" if config.beta == 2.0 else "mu-beta"]
