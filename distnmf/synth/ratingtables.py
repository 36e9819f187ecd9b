"""Low-rank user x item rating tables, as a store or CSV."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from distnmf.ingest.report import progress
from distnmf.matrixwriter import MatrixWriter
from distnmf.store import Matrix
from distnmf.synth.blocks import (
    GEN_ROWS,
    RATINGS,
    atomic_text,
    block_range,
    draw,
    make_labels,
    n_blocks,
    seeded_rng,
    zipf_cdf,
)


@dataclass(frozen=True)
class PlantedRatings:
    """A synthetic rating table and its ground truth.

    Attributes
    ----------
    path : the store (:func:`ratings`) or CSV file (:func:`rating_table`) written.
    item_factors : of shape (n_components, n_items), the planted item profiles.
    n_ratings : number of ratings written.
    matrix : the opened store, or None for :func:`rating_table`.
    """

    path: Path
    item_factors: np.ndarray
    n_ratings: int
    matrix: Matrix | None = None


@dataclass(frozen=True)
class _RatingModel:
    n_users: int
    n_items: int
    n_components: int
    per_user: float
    noise: float
    seed: int
    item_factors: np.ndarray
    item_cdf: np.ndarray

    def block(self, b: int) -> sp.csr_array:
        """Ratings of user block ``b``: CSR of shape (rows, n_items), integers 1..5."""
        start, stop = block_range(b, self.n_users)
        n = stop - start
        rng = seeded_rng(self.seed, RATINGS, b)
        users = rng.gamma(1.0, 1.0, size=(n, self.n_components))
        counts = np.maximum(1, rng.poisson(self.per_user, size=n))
        user = np.repeat(np.arange(n), counts)
        keys = np.unique(user * self.n_items + draw(self.item_cdf, rng.random(len(user))))
        rows, items = np.divmod(keys, self.n_items)
        score = np.einsum("ij,ji->i", users[rows], self.item_factors[:, items]) * (3.0 / self.n_components)
        stars = np.clip(np.rint(score + rng.normal(0.0, self.noise, size=len(score))), 1, 5)
        return sp.csr_array((stars.astype(np.float32), (rows, items)), shape=(n, self.n_items))


def _rating_model(n_users: int, n_items: int, n_components: int, density: float, noise: float,
                  seed: int) -> _RatingModel:
    if min(n_users, n_items, n_components) < 1:
        raise ValueError("n_users, n_items and n_components must be >= 1")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    rng = seeded_rng(seed, RATINGS)
    item_factors = rng.gamma(1.0, 1.0, size=(n_components, n_items))
    popularity = zipf_cdf(n_items, 0.8)  # item j is the (j + 1)-th most popular
    return _RatingModel(n_users, n_items, n_components, density * n_items, noise, seed, item_factors, popularity)


def ratings(path: str | os.PathLike, n_users: int = 10_000, n_items: int = 2_000, *, n_components: int = 8,
            density: float = 0.02, noise: float = 0.5, seed: int = 0, overwrite: bool = False,
            show_progress: bool | None = None) -> PlantedRatings:
    """Write a sparse low-rank rating matrix of shape (n_users, n_items) with ratings 1..5.

    User u rates about ``density * n_items`` items, drawn by Zipf popularity; the rating is
    ``clip(round(3 * u_u . v_j / n_components + N(0, noise)), 1, 5)`` with Gamma(1, 1) user and
    item profiles of ``n_components`` entries. Labels ``u00000...`` and ``m0000...``.
    """
    model = _rating_model(n_users, n_items, n_components, density, noise, seed)
    n_ratings = 0
    attrs = {"synth": {"kind": "ratings", "seed": seed, "n_components": n_components}}
    with MatrixWriter(path, n_items, sparse=True, overwrite=overwrite, row_labels=make_labels("u", n_users),
                      col_labels=make_labels("m", n_items), attrs=attrs) as writer:
        for b in progress(range(n_blocks(n_users)), total=n_blocks(n_users), desc="synth ratings",
                          unit="block", enabled=show_progress):
            block = model.block(b)
            n_ratings += block.nnz
            writer.append(block)
    return PlantedRatings(Path(path), model.item_factors, n_ratings, writer.matrix)


def rating_table(path: str | os.PathLike, n_users: int = 10_000, n_items: int = 2_000, *,
                 n_components: int = 8, density: float = 0.02, noise: float = 0.5, seed: int = 0,
                 overwrite: bool = False, show_progress: bool | None = None) -> PlantedRatings:
    """Write the ratings of :func:`ratings` (same parameters, same seed) as a CSV file with the
    header ``user,item,rating``, one rating per line, users in order."""
    model = _rating_model(n_users, n_items, n_components, density, noise, seed)
    users, items = make_labels("u", n_users), make_labels("m", n_items)
    n_ratings = 0
    with atomic_text(path, overwrite) as f:
        f.write("user,item,rating\n")
        for b in progress(range(n_blocks(n_users)), total=n_blocks(n_users), desc="synth rating table",
                          unit="block", enabled=show_progress):
            coo = model.block(b).tocoo()
            start = b * GEN_ROWS
            f.writelines(f"{users[start + int(r)]},{items[int(c)]},{int(v)}\n"
                         for r, c, v in zip(coo.row, coo.col, coo.data))
            n_ratings += coo.nnz
    return PlantedRatings(Path(path), model.item_factors, n_ratings)
