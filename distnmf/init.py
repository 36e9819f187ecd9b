"""Initial factors: random (scikit-learn's scaling) and the NNDSVD family over row blocks.

The NNDSVD variants need a truncated SVD of X. :func:`block_truncated_svd` computes one with
the randomized range finder (Halko, Martinsson & Tropp 2011) using only per-block products
and sums, so it runs on the same runners as NMF and never holds X in one place:
``Y_i = X_i Ω`` → orthonormalise (CholeskyQR2 on ``Σ Y_iᵀ Y_i``) → power iterations →
``B = Σ Q_iᵀ X_i`` → SVD of the small B.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

from distnmf.kernels import wt_x
from distnmf.source import BlockSource, as_source, materialize
from distnmf.validation import check_rank

if TYPE_CHECKING:
    from distnmf.runner import Runner

OVERSAMPLES = 10
POWER_ITERATIONS = 4
RITZ_RTOL = 1e-5  # power iterations stop once each of the k leading Ritz values moves less than this
NNDSVD_EPS = 1e-6  # entries below this are zeroed before the fill, as in scikit-learn


def random_seed(random_state: Any) -> int:
    """The int seed of a scikit-learn ``random_state``: an int is itself (so NNDSVD draws what
    scikit-learn draws for it), None or a ``RandomState`` gives one draw from it."""
    from sklearn.utils import check_random_state

    if isinstance(random_state, numbers.Integral):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


def power_iterations(k: int, shape: tuple[int, int]) -> int:
    """scikit-learn's ``randomized_svd(n_iter="auto")`` rule: 7 when k < 0.1 min(m, n), else 4.

    Each power iteration is two passes over X; the better subspace gives NNDSVD the same
    starting point quality as scikit-learn's (measured: on the 75,000 x 73,890 tag set, 3
    iterations led HALS to an optimum 5e-5 worse than scikit-learn's). This is the most
    :func:`block_truncated_svd` does: it stops sooner once the subspace has settled.
    """
    return 7 if k < 0.1 * min(shape) else 4


# --------------------------------------------------------------------------- block tasks


def _sketch(x: Any, omega: np.ndarray) -> np.ndarray:
    return np.asarray(materialize(x) @ omega, dtype=np.float32)


def _gram(y: np.ndarray) -> np.ndarray:
    y64 = y.astype(np.float64)
    return y64.T @ y64


def _apply_right(y: np.ndarray, r: np.ndarray) -> np.ndarray:
    return (y.astype(np.float64) @ r).astype(np.float32)


def _project(x: Any, q: np.ndarray) -> np.ndarray:
    """Q_iᵀ X_i of shape (l, n)."""
    return np.asarray(wt_x(q, materialize(x)), dtype=np.float64)


def _signed_norms(u: np.ndarray) -> np.ndarray:
    """Per column: squared norms of the positive and negative parts, shape (2, k)."""
    u64 = u.astype(np.float64)
    pos, neg = np.maximum(u64, 0), np.minimum(u64, 0)
    return np.stack([(pos * pos).sum(axis=0), (neg * neg).sum(axis=0)])


def _nndsvd_w_block(u: np.ndarray, seed: int, scale: np.ndarray, use_negative: np.ndarray,
                    lead: np.ndarray, fill: str, avg: float) -> np.ndarray:
    """W_i from U_i (m_i, k): column j is ``scale[j] * max(±U_ij, 0)``, or ``scale[j] * |U_ij|``
    for the leading column; then zeros filled per ``fill``."""
    signed = np.where(use_negative, -u, u)
    W = (np.where(lead, np.abs(u), np.maximum(signed, 0)) * scale).astype(np.float32)
    W[W < NNDSVD_EPS] = 0
    return _fill_zeros(W, fill, avg, seed)


def _fill_zeros(M: np.ndarray, fill: str, avg: float, seed: int) -> np.ndarray:
    if fill == "nndsvda":
        M[M == 0] = avg
    elif fill == "nndsvdar":
        zeros = M == 0
        rng = np.random.default_rng(seed)
        M[zeros] = np.abs(avg * rng.standard_normal(int(zeros.sum())) / 100)
    return M


def _random_w_block(n_rows: int, seed: int, k: int, avg: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.abs(avg * rng.standard_normal((n_rows, k))).astype(np.float32)


# --------------------------------------------------------------------------- orchestration


def _orthonormalize(runner: Runner, y_handles: list[Any], name: str, passes: int = 2) -> list[Any]:
    """CholeskyQR2 (``passes=2``): Q = Y R⁻¹ twice, with the Gram matrix reduced over blocks in
    float64. One pass suffices between power iterations, which only need well-scaled columns
    (scikit-learn uses LU there)."""
    q = y_handles
    for _ in range(passes):
        gram = runner.reduce(runner.map(f"{name}-gram", _gram, q), f"{name}-reduce")
        q = runner.map(f"{name}-orth", _apply_right, q, shared=(_orthonormalizer(gram)[0],))
    return q


def _cholesky_qr(z: np.ndarray, passes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis of the columns of a tall z (n, l) via the l x l Gram matrix
    (CholeskyQR; two passes make it CholeskyQR2), much cheaper than Householder QR for n >> l;
    and z's singular values, descending, from the first pass."""
    q = z.astype(np.float64)
    singular_values = np.zeros(0)
    for i in range(passes):
        inverse_r, evals = _orthonormalizer(q.T @ q)
        q = q @ inverse_r
        if i == 0:
            singular_values = np.sqrt(evals[::-1])
    return q, singular_values


def _orthonormalizer(gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R⁻¹ (l, r) with Y R⁻¹ orthonormal, from the Gram matrix YᵀY (l, l), and the r eigenvalues
    kept (ascending): directions with eigenvalues below 1e-12 of the largest are dropped instead
    of amplified."""
    evals, evecs = np.linalg.eigh(gram)
    keep = evals > evals.max() * 1e-12
    return evecs[:, keep] / np.sqrt(evals[keep]), evals[keep]


def _settled(previous: np.ndarray | None, values: np.ndarray, k: int) -> bool:
    """Whether each of the ``k`` leading Ritz values (descending) moved by at most
    :data:`RITZ_RTOL` of itself since the previous power iteration."""
    if previous is None or min(len(previous), len(values)) < k:
        return False
    return bool(np.all(np.abs(values[:k] - previous[:k]) <= RITZ_RTOL * values[:k]))


def block_truncated_svd(runner: Runner, x_handles: list[Any], bounds: tuple[int, ...], n_cols: int, k: int,
                        random_state: int, n_power_iter: int = POWER_ITERATIONS
                        ) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Randomized truncated SVD over row blocks, as scikit-learn's ``randomized_svd``.

    The same random draws (``RandomState(random_state).normal`` of shape (n, l), or (m, l) with
    Xᵀ in X's place when X is wide, m < n: scikit-learn's ``transpose="auto"``) and the same power
    iterations give the same subspace to float32 rounding, so NNDSVD starts where scikit-learn's
    does for the same ``random_state`` (with other draws the trailing directions of a slowly
    decaying spectrum, real text's, differ, and HALS can end in another local optimum).

    At most ``n_power_iter`` power iterations: they stop once the k leading Ritz values (the
    singular values of X on the current basis, free from its orthonormalisation) have settled to
    :data:`RITZ_RTOL`. Measured: on planted low-rank data with noise they settle to float32
    rounding after 2 iterations and the stop saves 5 of 7 (the SVD took 0.8 s of a one-iteration
    1,500 x 12,000 k=100 fit's 1.0 s); on real data — digits, text — they still move by 3e-5 to
    5e-3 after 7, so these get all of scikit-learn's iterations and its start.

    Returns U as per-block handles (each (m_i, k)), S of shape (k,), Vt of shape (k, n).
    """
    m = bounds[-1]
    width = min(m, n_cols, k + OVERSAMPLES)
    draws = np.random.RandomState(random_state)
    if m >= n_cols:
        basis, right, s, vt = _range_of_x(runner, x_handles, draws.normal(size=(n_cols, width)), k, n_power_iter)
    else:
        omega = draws.normal(size=(m, width)).astype(np.float32)
        parts = [omega[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        basis, right, s, vt = _range_of_xt(runner, x_handles, parts, k, n_power_iter)
    right, s, vt = _complete(*_flip_signs(right[:, :k], s[:k], vt[:k]), k)
    return runner.map("svd-U", _apply_right, basis, shared=(right,)), s, vt


def _range_of_x(runner: Runner, x_handles: list[Any], omega: np.ndarray, k: int, n_power_iter: int
                ) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """Range finder on X's columns: Q (m, l) in blocks from Y = (X Xᵀ)^q X Ω, Ω (n, l); then
    B = Qᵀ X = Û S Vᵀ. Returns Q's blocks, Û (l, l), S and Vᵀ (l, n): U = Q Û."""
    y = runner.map("svd-sketch", _sketch, x_handles, shared=(runner.broadcast(omega.astype(np.float32)),))
    ritz = None
    for _ in range(n_power_iter):
        q = _orthonormalize(runner, y, "svd-range", passes=1)
        z = runner.reduce(runner.map("svd-project", _project, x_handles, q), "svd-reduce")  # (l, n)
        z_q, values = _cholesky_qr(z.T)
        if _settled(ritz, values, k):
            break  # y's range has settled: it gives the basis below
        ritz = values
        y = runner.map("svd-sketch", _sketch, x_handles, shared=(runner.broadcast(z_q.astype(np.float32)),))
    q = _orthonormalize(runner, y, "svd-range")
    b = runner.reduce(runner.map("svd-project", _project, x_handles, q), "svd-reduce")  # (l, n)
    u_small, s, vt = np.linalg.svd(b, full_matrices=False)
    return q, u_small, s, vt


def _range_of_xt(runner: Runner, x_handles: list[Any], omega_parts: list[np.ndarray], k: int,
                 n_power_iter: int) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """Range finder on Xᵀ's columns (X wide): Q (n, l) here from Y = (Xᵀ X)^q Xᵀ Ω, Ω (m, l) in
    blocks; then Bᵀ = X Q = C, in blocks, orthonormalised C = Q_c R, and Rᵀ = Û S V̂ᵀ gives
    X ≈ Q_c V̂ S (Q Û)ᵀ. Returns Q_c's blocks, V̂ (l, l), S and (Q Û)ᵀ (l, n): U = Q_c V̂."""
    y = runner.reduce(runner.map("svd-project", _project, x_handles, omega_parts), "svd-reduce").T  # (n, l)
    ritz = None
    for i in range(n_power_iter):
        q, values = _cholesky_qr(y)
        if i > 0 and _settled(ritz, values, k):  # y = Xᵀ Z with Z orthonormal: its singular values are Ritz values
            break
        ritz = values if i > 0 else None
        z = runner.map("svd-sketch", _sketch, x_handles, shared=(runner.broadcast(q.astype(np.float32)),))
        z = _orthonormalize(runner, z, "svd-range", passes=1)
        y = runner.reduce(runner.map("svd-project", _project, x_handles, z), "svd-reduce").T
    q, _ = _cholesky_qr(y, passes=2)
    c = runner.map("svd-sketch", _sketch, x_handles, shared=(runner.broadcast(q.astype(np.float32)),))
    q_c = _orthonormalize(runner, c, "svd-basis")
    r = runner.reduce(runner.map("svd-r", _project, c, q_c), "svd-reduce")  # Q_cᵀ C
    u_hat, s, v_hat_t = np.linalg.svd(r.T, full_matrices=False)
    return q_c, v_hat_t.T, s, (q @ u_hat).T


def _complete(u: np.ndarray, s: np.ndarray, vt: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pad a rank-r decomposition (r < k: X has fewer than k numerical directions, or fewer
    than k rows or columns) to k triplets with zero singular values and zero vectors.

    NNDSVD then gives those components zero columns of W and rows of H, which the ``a`` /
    ``ar`` variants fill, as scikit-learn's NNDSVD does for (near-)zero singular values.
    """
    missing = k - len(s)
    if missing <= 0:
        return u, s, vt
    return (np.pad(u, ((0, 0), (0, missing))), np.pad(s, (0, missing)), np.pad(vt, ((0, missing), (0, 0))))


def _flip_signs(u: np.ndarray, s: np.ndarray, vt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic signs: the largest-magnitude entry of each row of Vt is positive."""
    signs = np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])
    signs[signs == 0] = 1
    return u * signs, s, vt * signs[:, None]


def nndsvd_init(runner: Runner, x_handles: list[Any], bounds: tuple[int, ...], n_cols: int, k: int,
                variant: str, x_mean: float, seed: int) -> tuple[list[Any], np.ndarray]:
    """NNDSVD (Boutsidis & Gallopoulos 2008) and its ``a`` / ``ar`` zero fills, over row blocks.

    As in scikit-learn: the leading pair gives ``sqrt(s0) |u0|`` and ``sqrt(s0) |v0|``; each
    other pair keeps the positive or negative parts of (u_j, v_j), whichever has the larger
    norm product, scaled by ``sqrt(s_j * that product)``.

    Returns W as per-block handles (each (m_i, k)) and H of shape (k, n), both float32.
    """
    u_blocks, s, vt = block_truncated_svd(runner, x_handles, bounds, n_cols, k, seed,
                                          power_iterations(k, (bounds[-1], n_cols)))
    u_pos, u_neg = np.sqrt(runner.reduce(runner.map("nndsvd-norms", _signed_norms, u_blocks), "nndsvd-reduce"))
    vt64 = vt.astype(np.float64)
    v_pos = np.linalg.norm(np.maximum(vt64, 0), axis=1)
    v_neg = np.linalg.norm(np.minimum(vt64, 0), axis=1)
    use_negative = u_neg * v_neg > u_pos * v_pos
    sigma = np.where(use_negative, u_neg * v_neg, u_pos * v_pos)
    u_norm = np.where(use_negative, u_neg, u_pos)
    v_norm = np.where(use_negative, v_neg, v_pos)
    u_norm[u_norm == 0] = 1.0
    v_norm[v_norm == 0] = 1.0
    lam = np.sqrt(s * sigma)
    lead = np.arange(k) == 0
    w_scale = np.where(lead, np.sqrt(s[0]), lam / u_norm)
    H = np.maximum(np.where(use_negative[:, None], -vt64, vt64), 0) * (lam / v_norm)[:, None]
    H[0] = np.sqrt(s[0]) * np.abs(vt64[0])
    H = H.astype(np.float32)
    H[H < NNDSVD_EPS] = 0
    avg = float(x_mean)  # scikit-learn fills NNDSVD zeros with mean(X)
    fill = variant if variant in ("nndsvda", "nndsvdar") else "nndsvd"
    seeds = [seed + 1 + i for i in range(len(bounds) - 1)]
    w_handles = runner.map("nndsvd-W", _nndsvd_w_block, u_blocks, seeds,
                           shared=(w_scale.astype(np.float32), use_negative, lead, fill, avg))
    return w_handles, _fill_zeros(H, fill, avg, seed)


def random_init(runner: Runner, bounds: tuple[int, ...], n_cols: int, k: int, x_mean: float,
                seed: int) -> tuple[list[Any], np.ndarray]:
    """scikit-learn's random init: entries ``|N(0, 1)| * sqrt(mean(X) / k)``, seeded per block."""
    avg = float(np.sqrt(max(x_mean, 0.0) / k))
    H = np.abs(avg * np.random.default_rng(seed).standard_normal((k, n_cols))).astype(np.float32)
    sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    seeds = [seed + 1 + i for i in range(len(sizes))]
    return runner.map("nmf-init-W", _random_w_block, sizes, seeds, shared=(k, avg)), H


def truncated_svd(X: Any, n_components: int, random_state: int | None = None,
                  n_power_iter: int = POWER_ITERATIONS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomized truncated SVD, read in row blocks on the active cluster or in-process.

    X is read block by block (it may be larger than memory), but U is gathered here: it
    must fit, at n_rows x k float32.

    Parameters
    ----------
    X : path, Matrix, numpy / scipy.sparse / Dask array of shape (n_rows, n_cols).
    n_components : number of singular triplets k.

    Returns
    -------
    U : ndarray (n_rows, k); S : ndarray (k,); Vt : ndarray (k, n_cols).
    """
    from distnmf.runner import make_runner

    runner = make_runner()
    try:  # the runner holds a thread pool and BLAS thread limits until closed, whatever fails
        source: BlockSource = as_source(X, n_blocks_hint=2 * runner.n_workers)
        check_rank(n_components, source.shape)
        x_handles = runner.load(source, keep=True)
        u, s, vt = block_truncated_svd(runner, x_handles, source.bounds, source.shape[1], n_components,
                                       random_seed(random_state), n_power_iter)
        return np.concatenate(runner.gather(u)), s, vt
    finally:
        runner.close()



def resolve_init(init: str | None, k: int, shape: tuple[int, int]) -> str:
    """scikit-learn's rule for the initialization of a rank-``k`` NMF of a matrix of ``shape``:
    ``None`` is "nndsvda" when k <= min(shape), else "random"; the NNDSVD variants need that bound."""
    m, n = shape
    if init is None:
        return "nndsvda" if k <= min(m, n) else "random"
    if init not in ("random", "custom") and k > min(m, n):
        raise ValueError(f"init = '{init}' can only be used when n_components <= min(n_samples, n_features)"
                         f" (n_components={k}, X of shape {(m, n)}); use init='random' or a smaller "
                         f"n_components")
    return init


def initialize_nmf(X: Any, n_components: int, init: str | None = None,
                   random_state: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Initial W (n_samples, k) and H (k, n_features) of in-memory X, as ``NMF.fit`` starts.

    Same arguments and rules as scikit-learn's NMF initializer: ``init=None`` is "nndsvda"
    when k <= min(n_samples, n_features), else "random"; the NNDSVD variants need that bound.
    Computed in float32, returned in X's float dtype.
    """
    from sklearn.utils.validation import check_array, check_non_negative

    from distnmf.runner import make_runner

    X = check_array(X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32])
    check_non_negative(X, "NMF initialization")
    m, n = X.shape
    init = resolve_init(init, n_components, (m, n))
    if init not in ("random", "nndsvd", "nndsvda", "nndsvdar"):
        raise ValueError(f"Invalid init parameter: got {init!r} instead of one of "
                         f"{(None, 'random', 'nndsvd', 'nndsvda', 'nndsvdar')}")
    seed = random_seed(random_state)
    runner = make_runner()
    try:
        source = as_source(X)
        x_handles = runner.load(source, keep=True)
        x_mean = float(X.sum()) / (m * n)
        if init == "random":
            w_handles, H = random_init(runner, source.bounds, n, n_components, x_mean, seed)
        else:
            w_handles, H = nndsvd_init(runner, x_handles, source.bounds, n, n_components, init, x_mean, seed)
        W = np.concatenate(runner.gather(w_handles))
        return W.astype(X.dtype, copy=False), H.astype(X.dtype, copy=False)
    finally:
        runner.close()
