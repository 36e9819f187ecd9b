"""Acceptance of the masked model as a recommender, on two rating generators with a known answer:
``distnmf.synth.ratings`` and :func:`biased_ratings` below (user and item biases, signed tastes,
missingness driven by popularity and activity). 10% of the ratings are held out; the masked
model's RMSE on them must beat the global-mean, item-mean and user+item-bias baselines and beat
zero-filled NMF by a wide margin. ``bench/recommender.py`` prints the same comparison at a larger
size, with ranking quality (NDCG@10, precision@10)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning

import distnmf
from distnmf import synth
from distnmf.rank import HoldOut, column_anchors
from distnmf.store import open_matrix


def biased_ratings(n_users: int = 3000, n_items: int = 600, rank: int = 5, density: float = 0.04,
                   seed: int = 0) -> sp.csr_array:
    """Ratings 1..5 = round(3.4 + b_u + b_i + p_u . q_i + noise), p and q signed; item i is rated
    with probability ∝ activity_u x popularity_i, and better items (higher b_i) are more popular."""
    rng = np.random.default_rng(seed)
    item_bias = rng.normal(0, 0.6, n_items)
    popularity = np.exp(1.2 * item_bias + rng.normal(0, 1.0, n_items))
    activity = rng.lognormal(0, 0.8, n_users)
    p = np.outer(activity, popularity)
    observed = rng.random((n_users, n_items)) < np.minimum(p * (density * n_users * n_items / p.sum()), 1)
    observed[np.arange(n_users), rng.choice(n_items, n_users, p=popularity / popularity.sum())] = True
    observed[rng.integers(0, n_users, n_items), np.arange(n_items)] = True  # every user and item has a rating
    user_bias = rng.normal(0, 0.4, n_users)
    P, Q = rng.normal(0, 0.45, (n_users, rank)), rng.normal(0, 0.45, (rank, n_items))
    score = 3.4 + user_bias[:, None] + item_bias[None, :] + P @ Q + rng.normal(0, 0.5, (n_users, n_items))
    rows, cols = np.nonzero(observed)
    return sp.csr_array((np.clip(np.rint(score[rows, cols]), 1, 5).astype(np.float32), (rows, cols)),
                        shape=observed.shape)


def split(X: sp.csr_array, fraction: float = 0.1, seed: int = 0):
    """Training ratings and held-out (users, items, ratings); every user and item keeps a rating."""
    return HoldOut(seed, fraction, column_anchors(X, 0, [seed])[0]).split(X, 0)


def baseline_predictions(train: sp.csr_array, rows: np.ndarray, cols: np.ndarray, reg: float = 5.0) -> dict:
    """Global mean, item mean, and user + item biases (ridge, alternating) at (rows, cols)."""
    mu = float(train.data.mean())
    coo = train.tocoo()
    n_u = np.bincount(coo.row, minlength=train.shape[0])
    n_i = np.bincount(coo.col, minlength=train.shape[1])
    item_mean = np.bincount(coo.col, coo.data, train.shape[1]) / np.maximum(n_i, 1)
    b_u, b_i = np.zeros(train.shape[0]), np.zeros(train.shape[1])
    for _ in range(10):
        b_i = np.bincount(coo.col, coo.data - mu - b_u[coo.row], train.shape[1]) / (n_i + reg)
        b_u = np.bincount(coo.row, coo.data - mu - b_i[coo.col], train.shape[0]) / (n_u + reg)
    return {"global mean": np.full(len(rows), mu), "item mean": item_mean[cols],
            "user+item bias": mu + b_u[rows] + b_i[cols]}


def nmf_predictions(train: sp.csr_array, rows: np.ndarray, cols: np.ndarray, k: int) -> dict:
    """Masked NMF (ALS-WR-style penalty alpha 0.1) and zero-filled NMF at (rows, cols)."""
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, params in (("masked NMF", {"missing": "unobserved", "alpha_W": 0.1}), ("zero-filled NMF", {})):
            model = distnmf.NMF(k, max_iter=100, random_state=0, **params)
            W = model.fit_transform(train)
            out[name] = np.einsum("ij,ji->i", W[rows], model.components_[:, cols])
    return out


def rmse(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - truth) ** 2)))


def ndcg_at_10(rows: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean over users with >= 2 held-out ratings of NDCG@10 of their held-out items ranked by
    prediction, with gain 2^rating - 1."""
    scores = []
    order = np.argsort(rows, kind="stable")
    rows, predicted, truth = rows[order], predicted[order], truth[order]
    for items in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(rows)) + 1):
        if len(items) < 2:
            continue
        gains = 2.0 ** truth[items] - 1
        discounts = 1 / np.log2(np.arange(2, min(10, len(items)) + 2))
        ranked = gains[np.argsort(-predicted[items], kind="stable")][:10]
        ideal = np.sort(gains)[::-1][:10]
        scores.append(float(ranked @ discounts[:len(ranked)] / (ideal @ discounts[:len(ideal)])))
    return float(np.mean(scores))


@pytest.fixture(scope="module", params=["synth.ratings", "biased"])
def held_out(request, tmp_path_factory):
    if request.param == "synth.ratings":
        planted = synth.ratings(tmp_path_factory.mktemp("r") / "r.zarr", n_users=3000, n_items=600,
                                n_components=8, density=0.05, seed=1)
        X = open_matrix(planted.path).to_memory()
    else:
        X = biased_ratings()
    train, rows, cols, truth = split(X)
    predictions = {**baseline_predictions(train, rows, cols), **nmf_predictions(train, rows, cols, k=8)}
    return request.param, rows, truth, predictions


def test_masked_nmf_beats_the_baselines_and_zero_filling(held_out):
    name, _, truth, predictions = held_out
    errors = {method: rmse(p, truth) for method, p in predictions.items()}
    masked = errors.pop("masked NMF")
    assert masked < 0.97 * min(errors["global mean"], errors["item mean"], errors["user+item bias"]), (name, masked, errors)
    assert masked < 0.4 * errors["zero-filled NMF"], (name, masked, errors)


def test_masked_nmf_ranks_held_out_items_better_than_item_means(held_out):
    name, rows, truth, predictions = held_out
    ndcg = {method: ndcg_at_10(rows, p, truth) for method, p in predictions.items()}
    assert ndcg["masked NMF"] > max(ndcg["item mean"], ndcg["zero-filled NMF"]), (name, ndcg)
