"""Masked NMF benchmark: recommender quality, the solver choice, and a large out-of-core fit.

    python bench/masked.py [--only recommender|solvers|ranks|large] [--data data/bench] [--quick]

``recommender``: on ``synth.ratings`` (20,000 users x 2,000 items) and on the biased generator of
tests/test_recommender.py (user and item biases, signed tastes, popularity-driven missingness;
20,000 x 2,000), 10% of the ratings held out: RMSE of the global-mean, item-mean and user+item
bias baselines, zero-filled NMF and masked NMF; NDCG@10 of each user's held-out items; and
precision@10 of the top 10 among all items the user has not rated in training (a hit is a
held-out rating >= 4).

``solvers``: why the masked fit is HALS on per-row normal equations and not masked
multiplicative updates: both from the same start on the synth ratings, in-process; training
loss and held-out RMSE after the same wall time.

``ranks``: ``select_rank`` on planted non-negative low-rank data with Gaussian noise (500 x 200;
dense, and sparse with 30% of the entries stored), true ranks 3, 6 and 10: the rank each
replicate's held-out error picks, best_k and one_se_k.

``large``: a 1,000,000 x 50,000 rating table with ~20 M ratings generated to a Zarr store, fitted
out of core (blocks re-read every pass) on a 2-worker x 2 GiB LocalCluster: seconds per
iteration of the masked fit beside the ordinary (zero-filled) fit of the same store, in one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_recommender import (
    baseline_predictions,
    biased_ratings,
    ndcg_at_10,
    rmse,
    split,
)

import distnmf
from distnmf import synth
from distnmf.store import open_matrix


def _fit(train: sp.csr_array, k: int, **params) -> tuple[np.ndarray, np.ndarray, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        model = distnmf.NMF(k, max_iter=100, random_state=0, **params)
        W = model.fit_transform(train)
    return W, model.components_, time.perf_counter() - started


def precision_at_10(train: sp.csr_array, W: np.ndarray | None, H: np.ndarray | None, item_score: np.ndarray | None,
                    rows: np.ndarray, cols: np.ndarray, truth: np.ndarray, users: np.ndarray) -> float:
    """Mean over ``users`` of |top 10 unrated-in-training items ∩ held-out items rated >= 4| / 10."""
    liked: dict[int, set[int]] = {}
    for r, c, t in zip(rows, cols, truth):
        if t >= 4:
            liked.setdefault(int(r), set()).add(int(c))
    hits = []
    for u in users:
        scores = (W[u] @ H).astype(np.float64) if W is not None else item_score.astype(np.float64).copy()
        scores[train.indices[train.indptr[u]:train.indptr[u + 1]]] = -np.inf
        top = np.argpartition(-scores, 10)[:10]
        hits.append(len(liked.get(int(u), set()) & set(top.tolist())) / 10)
    return float(np.mean(hits))


def recommender(data: Path, quick: bool) -> None:
    n_users, n_items = (5000, 1000) if quick else (20_000, 2000)
    planted = synth.ratings(data / f"ratings-{n_users}.zarr", n_users=n_users, n_items=n_items, n_components=8,
                            density=0.02, seed=1, overwrite=True)
    tables = {"synth.ratings": open_matrix(planted.path).to_memory(),
              "biased": biased_ratings(n_users, n_items, density=0.02, seed=0)}
    for name, X in tables.items():
        train, rows, cols, truth = split(X)
        predictions = baseline_predictions(train, rows, cols)
        coo = train.tocoo()
        item_mean = np.bincount(coo.col, coo.data, X.shape[1]) / np.maximum(np.bincount(coo.col, minlength=X.shape[1]), 1)
        popularity = np.bincount(coo.col, minlength=X.shape[1]).astype(np.float64)
        W_m, H_m, t_m = _fit(train, 8, missing="unobserved", alpha_W=0.1)
        W_z, H_z, t_z = _fit(train, 8)
        predictions["zero-filled NMF"] = np.einsum("ij,ji->i", W_z[rows], H_z[:, cols])
        predictions["masked NMF"] = np.einsum("ij,ji->i", W_m[rows], H_m[:, cols])
        users = np.unique(rows)[:2000]
        p10 = {"item mean": precision_at_10(train, None, None, item_mean, rows, cols, truth, users),
               "most popular": precision_at_10(train, None, None, popularity, rows, cols, truth, users),
               "zero-filled NMF": precision_at_10(train, W_z, H_z, None, rows, cols, truth, users),
               "masked NMF": precision_at_10(train, W_m, H_m, None, rows, cols, truth, users)}
        print(f"\n{name}: {X.shape[0]:,} x {X.shape[1]:,}, {X.nnz:,} ratings, {len(truth):,} held out "
              f"(fits: masked {t_m:.1f} s, zero-filled {t_z:.1f} s, k=8, 100 iterations at most)")
        print(f"  {'method':18s} {'RMSE':>7s} {'NDCG@10':>8s} {'P@10':>6s}")
        for method, p in predictions.items():
            p10_text = f"{p10[method]:6.3f}" if method in p10 else "     -"
            print(f"  {method:18s} {rmse(p, truth):7.4f} {ndcg_at_10(rows, p, truth):8.4f} {p10_text}")
        print(f"  {'most popular':18s} {'-':>7s} {'-':>8s} {p10['most popular']:6.3f}")


# --------------------------------------------------------------------------- solver choice


def masked_mu(train: sp.csr_array, W: np.ndarray, H: np.ndarray, seconds: float, l2: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Masked multiplicative updates (the per-block terms W_iᵀ(M∘X_i) and W_iᵀ(M∘(W_i H))) for
    ``seconds`` of wall time; the ALS-WR penalty l2 * count per row / column as in the HALS fit."""
    rows = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    cols = train.indices
    row_n = np.diff(train.indptr).astype(np.float32)[:, None]
    col_n = np.bincount(cols, minlength=train.shape[1]).astype(np.float32)[None, :]
    started, iterations = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        wh = sp.csr_array((np.einsum("ij,ji->i", W[rows], H[:, cols]), cols, train.indptr), shape=train.shape)
        W = W * (train @ H.T) / np.maximum(wh @ H.T + l2 * row_n * W, 1e-12)
        wh = sp.csr_array((np.einsum("ij,ji->i", W[rows], H[:, cols]), cols, train.indptr), shape=train.shape)
        H = H * (train.T @ W).T / np.maximum((wh.T @ W).T + l2 * col_n * H, 1e-12)
        iterations += 1
    return W.astype(np.float32), H.astype(np.float32), iterations


def solvers(data: Path, quick: bool) -> None:
    n_users, n_items = (5000, 1000) if quick else (20_000, 2000)
    planted = synth.ratings(data / f"ratings-{n_users}.zarr", n_users=n_users, n_items=n_items, n_components=8,
                            density=0.02, seed=1, overwrite=True)
    X = open_matrix(planted.path).to_memory()
    train, rows, cols, truth = split(X)
    rng = np.random.default_rng(0)
    scale = np.sqrt(train.data.mean() / 8)
    W0 = (scale * rng.random((X.shape[0], 8))).astype(np.float32)
    H0 = (scale * rng.random((8, X.shape[1]))).astype(np.float32)

    def observed_rmse(W: np.ndarray, H: np.ndarray) -> tuple[float, float]:
        r = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
        fit = np.einsum("ij,ji->i", W[r], H[:, train.indices])
        return rmse(fit, train.data), rmse(np.einsum("ij,ji->i", W[rows], H[:, cols]), truth)

    print(f"\nsolver choice on synth.ratings {X.shape[0]:,} x {X.shape[1]:,}, {train.nnz:,} training ratings, "
          f"k=8, alpha 0.1 (ALS-WR scaling), same random start, in-process")
    print(f"  {'solver':28s} {'iterations':>10s} {'seconds':>8s} {'train RMSE':>10s} {'test RMSE':>10s}")
    for iterations in (5, 20, 50):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            model = distnmf.NMF(8, init="custom", missing="unobserved", alpha_W=0.1, max_iter=iterations, tol=0)
            W = model.fit_transform(train, W=W0, H=H0)
            seconds = time.perf_counter() - started
        train_rmse, test_rmse = observed_rmse(W, model.components_)
        print(f"  {'masked HALS (distnmf)':28s} {iterations:10d} {seconds:8.2f} {train_rmse:10.4f} {test_rmse:10.4f}")
        W_mu, H_mu, mu_iterations = masked_mu(train, W0, H0, seconds, 0.1)
        train_rmse, test_rmse = observed_rmse(W_mu, H_mu)
        print(f"  {'masked MU, same wall time':28s} {mu_iterations:10d} {seconds:8.2f} {train_rmse:10.4f} {test_rmse:10.4f}")


# --------------------------------------------------------------------------- rank recovery


def ranks(data: Path, quick: bool) -> None:
    from test_rank import planted

    m, n = (300, 120) if quick else (500, 200)
    print(f"\nselect_rank on planted {m} x {n} data, noise 0.1, 10% held out, 3 replicates, max_iter 200")
    print(f"  {'data':22s} {'true':>4s} {'ks':22s} {'per replicate':>14s} {'best':>5s} {'1-SE':>5s} {'seconds':>8s}")
    for observed in (1.0, 0.3):
        for rank in (3, 6, 10):
            X = planted(m, n, rank, noise=0.1, seed=rank, observed=observed)
            ks = [max(1, rank - 2), rank - 1, rank, rank + 1, rank + 2, rank + 4]
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = distnmf.select_rank(X, ks, test_fraction=0.1, replicates=3, max_iter=200)
            picked = [report.ks[i] for i in report.test_rmse.argmin(axis=0)]
            kind = "dense" if observed == 1.0 else f"sparse, {observed:.0%} stored"
            print(f"  {kind:22s} {rank:4d} {','.join(map(str, ks)):22s} {','.join(map(str, picked)):>14s} "
                  f"{report.best_k:5d} {report.one_se_k:5d} {time.perf_counter() - started:8.1f}")


# --------------------------------------------------------------------------- large out of core


def large(data: Path, quick: bool) -> None:
    from distributed import Client, LocalCluster

    n_users, n_items, per_user = (100_000, 50_000, 20) if quick else (1_000_000, 50_000, 20)
    path = data / f"ratings-{n_users}x{n_items}.zarr"
    if not path.exists():
        started = time.perf_counter()
        synth.ratings(path, n_users=n_users, n_items=n_items, n_components=10, density=per_user / n_items, seed=2,
                      show_progress=False)
        print(f"generated {path} in {time.perf_counter() - started:.0f} s")
    matrix = open_matrix(path)
    print(f"\nlarge: {matrix.shape[0]:,} x {matrix.shape[1]:,}, {matrix.nnz:,} ratings, store "
          f"{matrix.nbytes / 2**20:.0f} MiB; 2 workers x 1 thread x 2 GiB, blocks re-read every pass, k=10")
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="2GiB", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster):
        for name, params in (("zero-filled (missing='zero')", {}), ("masked (missing='unobserved')",
                                                                   {"missing": "unobserved", "alpha_W": 0.1})):
            times: list[float] = []
            model = distnmf.NMF(10, init="random", random_state=0, max_iter=4, tol=0, keep_in_memory=False,
                                callback=lambda i, e, elapsed, times=times: times.append(elapsed), **params)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(path)
            per_iteration = np.diff(times)
            print(f"  {name:30s} start-up + first iteration {times[0]:6.1f} s; then "
                  f"{np.median(per_iteration):6.1f} s per iteration (median of {len(per_iteration)}); "
                  f"relative error {model.error_history_[-1]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["recommender", "solvers", "ranks", "large"])
    parser.add_argument("--data", type=Path, default=Path("data/bench"))
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    print(f"distnmf masked bench, commit {os.popen('git rev-parse --short HEAD').read().strip()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    for part in ("recommender", "solvers", "ranks", "large"):
        if args.only in (None, part):
            globals()[part](args.data, args.quick)


if __name__ == "__main__":
    main()
