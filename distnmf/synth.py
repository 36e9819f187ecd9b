"""Seeded synthetic data with planted structure, streamed straight to disk at any size.

- :func:`tag_set` / :func:`tag_records`: an item x tag occurrence set with Zipf tag popularity
  and planted topics (the seed's 75,000 x 73,890 with ~1.35 M assignments by default), as a
  sparse store or as the JSON Lines file that :func:`distnmf.ingest.ingest_tags` reads;
- :func:`pixel_corpus`: dense images mixed from planted smooth blobs, optionally with planted
  near-duplicate groups, of any size (larger than memory included);
- :func:`ratings` / :func:`rating_table`: a low-rank user x item rating table, as a store or CSV;
- :func:`documents`: text lines drawn from planted topics of pseudo-words.

Rows are generated in blocks of ``GEN_ROWS`` rows, block ``b`` from a random generator seeded
by ``(seed, kind, b)``; global structure (topics, parts) comes from ``(seed, kind)``. Output
therefore depends only on the parameters and the seed, never on memory or write sizes.
Each function returns the planted ground truth so tests can check what NMF recovers.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from distnmf.ingest.report import progress
from distnmf.matrixwriter import MatrixWriter, default_chunk_rows
from distnmf.storage import atomic_path
from distnmf.store import Matrix

GEN_ROWS = 4096
_TAGS, _TAG_SPLIT, _PIXELS, _RATINGS, _DOCS, _CALIBRATE = range(6)


def _rng(seed: int, kind: int, block: int | None = None) -> np.random.Generator:
    key = (kind,) if block is None else (kind, block)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _n_blocks(n_rows: int) -> int:
    return -(-n_rows // GEN_ROWS)


def _block_range(b: int, n_rows: int) -> tuple[int, int]:
    return b * GEN_ROWS, min(n_rows, (b + 1) * GEN_ROWS)


def _labels(prefix: str, n: int) -> list[str]:
    width = len(str(max(n - 1, 0)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


@contextlib.contextmanager
def _atomic_text(path: str | os.PathLike, overwrite: bool) -> Iterator[TextIO]:
    """A text file written under a temporary name and renamed into place on success."""
    with atomic_path(Path(path), overwrite) as tmp, open(tmp, "w", encoding="utf-8") as file:
        yield file


def _zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


# --------------------------------------------------------------------------- tag sets


@dataclass(frozen=True)
class PlantedTags:
    """A synthetic tag set and its ground truth.

    Attributes
    ----------
    path : the store (:func:`tag_set`) or JSON Lines file (:func:`tag_records`) written.
    topic_tags : of shape (n_topics, topic_size), the column indices of each topic's tags.
    item_topics : of shape (n_items, 2), each item's two topics (equal when it has one).
    tag_labels : of shape (n_tags,), the tag names (column labels of :func:`tag_set`).
    matrix : the opened store, or None for :func:`tag_records`.
    """

    path: Path
    topic_tags: np.ndarray
    item_topics: np.ndarray
    tag_labels: np.ndarray
    matrix: Matrix | None = None


@dataclass(frozen=True)
class _TagModel:
    n_items: int
    n_tags: int
    n_topics: int
    topic_size: int
    mean_tags: float
    topic_mix: float
    second_topic: float
    seed: int
    cdf: np.ndarray
    topic_tags: np.ndarray

    def block(self, b: int, kind: int = _TAGS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, indices, topics)`` of item block ``b``: CSR structure of shape
        (rows, n_tags) with sorted unique tags per item, and topics of shape (rows, 2)."""
        start, stop = _block_range(b, self.n_items)
        n = stop - start
        rng = _rng(self.seed, kind, b)
        first = rng.integers(self.n_topics, size=n)
        second = np.where(rng.random(n) < self.second_topic, rng.integers(self.n_topics, size=n), first)
        counts = np.maximum(1, rng.poisson(self.mean_tags, size=n))
        item = np.repeat(np.arange(n), counts)
        total = int(counts.sum())
        topic = np.where(rng.random(total) < 0.5, second[item], first[item])
        from_topic = rng.random(total) < self.topic_mix
        planted = self.topic_tags[topic, rng.integers(self.topic_size, size=total)]
        background = _draw(self.cdf, rng.random(total))
        keys = np.unique(item * self.n_tags + np.where(from_topic, planted, background))
        rows, tags = np.divmod(keys, self.n_tags)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        return indptr, tags.astype(np.int32), np.stack([first, second], axis=1)

    def labels(self) -> np.ndarray:
        width = len(str(self.n_tags - 1))
        labels = np.array([f"t{t:0{width}d}" for t in range(self.n_tags)], dtype=object)
        for k, tags in enumerate(self.topic_tags):
            labels[tags] = [f"topic{k:02d}-{j:02d}" for j in range(self.topic_size)]
        return labels.astype(str)


def _tag_model(n_items: int, n_tags: int, n_assignments: int, n_topics: int, topic_size: int,
               topic_mix: float, second_topic: float, zipf_exponent: float, seed: int) -> _TagModel:
    if min(n_items, n_tags, n_assignments, n_topics, topic_size) < 1:
        raise ValueError("n_items, n_tags, n_assignments, n_topics and topic_size must all be >= 1")
    if n_topics * topic_size > n_tags:
        raise ValueError(f"n_topics * topic_size = {n_topics * topic_size} planted tags exceed n_tags={n_tags}")
    if not 0 <= topic_mix <= 1 or not 0 <= second_topic <= 1:
        raise ValueError(f"topic_mix and second_topic must be in [0, 1], got {topic_mix}, {second_topic}")
    rng = _rng(seed, _TAGS)
    needed = n_topics * topic_size
    skip = min(10, n_tags - needed)  # the most popular tags stay generic, as in real tag sets
    chosen = rng.choice(np.arange(skip, n_tags), size=needed, replace=False)
    topic_tags = np.sort(chosen.reshape(n_topics, topic_size), axis=1)
    model = _TagModel(n_items, n_tags, n_topics, topic_size, n_assignments / n_items, topic_mix,
                      second_topic, seed, _zipf_cdf(n_tags, zipf_exponent), topic_tags)
    # Repeated draws of a tag on one item merge; calibrate the mean on a pilot block so the
    # expected number of distinct assignments is n_assignments.
    pilot_rows = min(n_items, GEN_ROWS)
    indptr, _, _ = replace(model, n_items=pilot_rows).block(0, kind=_CALIBRATE)
    ratio = indptr[-1] / (pilot_rows * model.mean_tags)
    return replace(model, mean_tags=model.mean_tags / max(ratio, 1e-3))


def tag_set(path: str | os.PathLike, n_items: int = 75_000, n_tags: int = 73_890, *,
            n_assignments: int = 1_350_000, n_topics: int = 20, topic_size: int = 50,
            topic_mix: float = 0.6, second_topic: float = 0.3, zipf_exponent: float = 1.0,
            seed: int = 0, overwrite: bool = False, show_progress: bool | None = None) -> PlantedTags:
    """Write a synthetic 0/1 item x tag occurrence matrix of shape (n_items, n_tags).

    Tag popularity follows a Zipf law (tag t drawn with probability proportional to
    ``1 / (t + 1) ** zipf_exponent``, so columns are in decreasing background popularity).
    ``n_topics`` topics each own ``topic_size`` distinct tags. Each item has one topic (or two,
    with probability ``second_topic``) and about ``n_assignments / n_items`` distinct tags,
    each drawn with probability ``topic_mix`` uniformly from one of its topics' tags, else
    from the Zipf background. Row labels ``item000000...``; planted tags are named
    ``topicKK-JJ``, the others ``tNNNNN``.
    """
    model = _tag_model(n_items, n_tags, n_assignments, n_topics, topic_size, topic_mix, second_topic,
                       zipf_exponent, seed)
    labels = model.labels()
    item_topics = np.empty((n_items, 2), dtype=np.int64)
    attrs = {"synth": {"kind": "tag_set", "seed": seed, "n_topics": n_topics, "topic_size": topic_size}}
    with MatrixWriter(path, n_tags, sparse=True, overwrite=overwrite, row_labels=_labels("item", n_items),
                      col_labels=labels.tolist(), attrs=attrs) as writer:
        for b in progress(range(_n_blocks(n_items)), total=_n_blocks(n_items), desc="synth tags",
                          unit="block", enabled=show_progress):
            indptr, indices, topics = model.block(b)
            start, stop = _block_range(b, n_items)
            item_topics[start:stop] = topics
            data = np.ones(len(indices), dtype=np.float32)
            writer.append(sp.csr_array((data, indices, indptr), shape=(stop - start, n_tags)))
    return PlantedTags(Path(path), model.topic_tags, item_topics, labels, writer.matrix)


def tag_records(path: str | os.PathLike, n_items: int = 75_000, n_tags: int = 73_890, *,
                n_assignments: int = 1_350_000, n_topics: int = 20, topic_size: int = 50,
                topic_mix: float = 0.6, second_topic: float = 0.3, zipf_exponent: float = 1.0,
                seed: int = 0, overwrite: bool = False, show_progress: bool | None = None) -> PlantedTags:
    """Write the same tag set as :func:`tag_set` (same parameters, same seed) as JSON Lines.

    One record per item, ``{"id": "item000000", "high_conf_tags": [...], "low_conf_tags": [...]}``:
    the item's tags (by name) split at random between the two fields, as in the seed.
    """
    model = _tag_model(n_items, n_tags, n_assignments, n_topics, topic_size, topic_mix, second_topic,
                       zipf_exponent, seed)
    labels = model.labels()
    ids = _labels("item", n_items)
    item_topics = np.empty((n_items, 2), dtype=np.int64)
    with _atomic_text(path, overwrite) as f:
        for b in progress(range(_n_blocks(n_items)), total=_n_blocks(n_items), desc="synth tag records",
                          unit="block", enabled=show_progress):
            indptr, indices, topics = model.block(b)
            start, stop = _block_range(b, n_items)
            item_topics[start:stop] = topics
            high = _rng(seed, _TAG_SPLIT, b).random(len(indices)) < 0.5
            names = labels[indices]
            for i in range(stop - start):
                lo, hi = indptr[i], indptr[i + 1]
                record = {"id": ids[start + i], "high_conf_tags": names[lo:hi][high[lo:hi]].tolist(),
                          "low_conf_tags": names[lo:hi][~high[lo:hi]].tolist()}
                f.write(json.dumps(record) + "\n")
    return PlantedTags(Path(path), model.topic_tags, item_topics, labels)


# --------------------------------------------------------------------------- pixel corpora


@dataclass(frozen=True)
class PlantedPixels:
    """A synthetic image corpus and its ground truth.

    Attributes
    ----------
    matrix : the dense store, shape (n_images, h * w), values in [0, 1].
    parts : of shape (n_parts, h * w), the planted blobs (peak value 1).
    groups : of shape (near_duplicates, group_size), row indices of each near-duplicate group.
    """

    matrix: Matrix
    parts: np.ndarray
    groups: np.ndarray


def _blobs(rng: np.random.Generator, n_parts: int, h: int, w: int) -> np.ndarray:
    """Smooth non-negative parts: rotated 2-D Gaussian bumps, shape (n_parts, h * w)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    parts = np.empty((n_parts, h * w), dtype=np.float32)
    for k in range(n_parts):
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        sy, sx = rng.uniform(0.05, 0.2) * h, rng.uniform(0.05, 0.2) * w
        angle = rng.uniform(0, np.pi)
        dy, dx = y - cy, x - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        blob = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)).ravel()
        parts[k] = blob / blob.max()
    return parts


def pixel_corpus(path: str | os.PathLike, n_images: int, image_shape: tuple[int, int] = (64, 64), *,
                 n_parts: int = 16, parts_per_image: float = 3.0, noise: float = 0.02,
                 near_duplicates: int = 0, group_size: int = 3, duplicate_noise: float = 0.01,
                 seed: int = 0, labels: bool = True, compression: str | None = None,
                 overwrite: bool = False, show_progress: bool | None = None) -> PlantedPixels:
    """Write a dense corpus of shape (n_images, h * w) mixed from ``n_parts`` planted blobs.

    Image i is ``clip(c_i @ parts + noise * U(0, 1), 0, 1)`` with c_i non-negative, about
    ``parts_per_image`` non-zero (Gamma-distributed) coefficients. ``near_duplicates`` groups
    of ``group_size`` rows share one coefficient vector and differ only by ``duplicate_noise``.
    Generated block by block, so the corpus may be larger than memory; ``labels=False`` skips
    the row labels (``img0000000...``) for very large corpora. ``attrs["image_shape"]`` is set.
    """
    h, w = (int(v) for v in image_shape)
    if n_images < 1 or n_parts < 1 or h < 1 or w < 1:
        raise ValueError("n_images, n_parts and both image_shape sizes must be >= 1")
    if near_duplicates * group_size > n_images:
        raise ValueError(f"near_duplicates * group_size = {near_duplicates * group_size} exceeds n_images={n_images}")
    rng = _rng(seed, _PIXELS)
    parts = _blobs(rng, n_parts, h, w)
    members = rng.choice(n_images, size=near_duplicates * group_size, replace=False)
    groups = np.sort(members.reshape(near_duplicates, group_size), axis=1)
    group_coef = _coefficients(rng, near_duplicates, n_parts, parts_per_image + 1)
    group_of = dict(zip(groups.ravel().tolist(), np.repeat(np.arange(near_duplicates), group_size).tolist()))
    attrs = {"image_shape": [h, w], "synth": {"kind": "pixel_corpus", "seed": seed, "n_parts": n_parts}}
    chunk_rows = min(n_images, default_chunk_rows(h * w))
    with MatrixWriter(path, h * w, chunk_rows=chunk_rows, compression=compression, overwrite=overwrite,
                      row_labels=_labels("img", n_images) if labels else None, attrs=attrs) as writer:
        for b in progress(range(_n_blocks(n_images)), total=_n_blocks(n_images), desc="synth pixels",
                          unit="block", enabled=show_progress):
            start, stop = _block_range(b, n_images)
            block_rng = _rng(seed, _PIXELS, b)
            coef = _coefficients(block_rng, stop - start, n_parts, parts_per_image)
            level = np.full((stop - start, 1), noise, dtype=np.float32)
            for row in range(start, stop):
                if row in group_of:
                    coef[row - start] = group_coef[group_of[row]]
                    level[row - start] = duplicate_noise
            images = coef @ parts + level * block_rng.random((stop - start, h * w), dtype=np.float32)
            writer.append(np.clip(images, 0.0, 1.0, out=images))
    return PlantedPixels(writer.matrix, parts, groups)


def _coefficients(rng: np.random.Generator, n: int, n_parts: int, active: float) -> np.ndarray:
    """Non-negative mixing weights of shape (n, n_parts), about ``active`` non-zero per row."""
    mask = rng.random((n, n_parts)) < min(1.0, active / n_parts)
    mask[np.arange(n), rng.integers(n_parts, size=n)] = True
    return (mask * rng.gamma(4.0, 0.1, size=(n, n_parts))).astype(np.float32)


# --------------------------------------------------------------------------- ratings


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
        start, stop = _block_range(b, self.n_users)
        n = stop - start
        rng = _rng(self.seed, _RATINGS, b)
        users = rng.gamma(1.0, 1.0, size=(n, self.n_components))
        counts = np.maximum(1, rng.poisson(self.per_user, size=n))
        user = np.repeat(np.arange(n), counts)
        keys = np.unique(user * self.n_items + _draw(self.item_cdf, rng.random(len(user))))
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
    rng = _rng(seed, _RATINGS)
    item_factors = rng.gamma(1.0, 1.0, size=(n_components, n_items))
    popularity = _zipf_cdf(n_items, 0.8)  # item j is the (j + 1)-th most popular
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
    with MatrixWriter(path, n_items, sparse=True, overwrite=overwrite, row_labels=_labels("u", n_users),
                      col_labels=_labels("m", n_items), attrs=attrs) as writer:
        for b in progress(range(_n_blocks(n_users)), total=_n_blocks(n_users), desc="synth ratings",
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
    users, items = _labels("u", n_users), _labels("m", n_items)
    n_ratings = 0
    with _atomic_text(path, overwrite) as f:
        f.write("user,item,rating\n")
        for b in progress(range(_n_blocks(n_users)), total=_n_blocks(n_users), desc="synth rating table",
                          unit="block", enabled=show_progress):
            coo = model.block(b).tocoo()
            start = b * GEN_ROWS
            f.writelines(f"{users[start + int(r)]},{items[int(c)]},{int(v)}\n"
                         for r, c, v in zip(coo.row, coo.col, coo.data))
            n_ratings += coo.nnz
    return PlantedRatings(Path(path), model.item_factors, n_ratings)


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class PlantedDocuments:
    """Synthetic text documents and their ground truth.

    Attributes
    ----------
    path : the text file, one document per line.
    topic_words : of shape (n_topics, words_per_topic), each topic's words.
    doc_topics : of shape (n_docs, 2), each document's two topics (equal when it has one).
    """

    path: Path
    topic_words: np.ndarray
    doc_topics: np.ndarray


def pseudo_words(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pronounceable 6-letter words (consonant-vowel x 3), none an English stop word."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    space = len(syllables) ** 3
    if n > space // 2:
        raise ValueError(f"at most {space // 2} pseudo-words are available, asked for {n}")
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        for code in rng.integers(space, size=2 * (n - len(words))):
            a, rest = divmod(int(code), len(syllables) ** 2)
            b, c = divmod(rest, len(syllables))
            word = syllables[a] + syllables[b] + syllables[c]
            if word not in seen and word not in ENGLISH_STOP_WORDS:
                seen.add(word)
                words.append(word)
                if len(words) == n:
                    break
    return words


def documents(path: str | os.PathLike, n_docs: int = 10_000, *, n_topics: int = 10, words_per_topic: int = 30,
              n_background: int = 300, doc_length: int = 50, topic_mix: float = 0.8,
              second_topic: float = 0.3, seed: int = 0, overwrite: bool = False,
              show_progress: bool | None = None) -> PlantedDocuments:
    """Write ``n_docs`` lines of text, each a document drawn from one or two planted topics.

    A document has about ``doc_length`` words; each is, with probability ``topic_mix``, a
    uniform pick from one of its topics' ``words_per_topic`` words, else a Zipf-distributed
    pick from ``n_background`` shared words. Words are distinct pseudo-words.
    """
    if min(n_docs, n_topics, words_per_topic, n_background, doc_length) < 1:
        raise ValueError("n_docs, n_topics, words_per_topic, n_background and doc_length must be >= 1")
    rng = _rng(seed, _DOCS)
    vocab = np.array(pseudo_words(n_topics * words_per_topic + n_background, rng))
    topic_words = vocab[: n_topics * words_per_topic].reshape(n_topics, words_per_topic)
    background = vocab[n_topics * words_per_topic:]
    cdf = _zipf_cdf(n_background, 1.0)
    doc_topics = np.empty((n_docs, 2), dtype=np.int64)
    with _atomic_text(path, overwrite) as f:
        for b in progress(range(_n_blocks(n_docs)), total=_n_blocks(n_docs), desc="synth documents",
                          unit="block", enabled=show_progress):
            start, stop = _block_range(b, n_docs)
            for words, topics in _document_block(_rng(seed, _DOCS, b), stop - start, topic_words, background,
                                                 cdf, doc_length, topic_mix, second_topic):
                f.write(" ".join(words) + "\n")
                doc_topics[start] = topics
                start += 1
    return PlantedDocuments(Path(path), topic_words, doc_topics)


def _document_block(rng: np.random.Generator, n: int, topic_words: np.ndarray, background: np.ndarray,
                    cdf: np.ndarray, doc_length: int, topic_mix: float, second_topic: float
                    ) -> Iterator[tuple[np.ndarray, tuple[int, int]]]:
    n_topics, per_topic = topic_words.shape
    first = rng.integers(n_topics, size=n)
    second = np.where(rng.random(n) < second_topic, rng.integers(n_topics, size=n), first)
    lengths = np.maximum(1, rng.poisson(doc_length, size=n))
    for i in range(n):
        m = int(lengths[i])
        topic = np.where(rng.random(m) < 0.5, second[i], first[i])
        planted = topic_words[topic, rng.integers(per_topic, size=m)]
        words = np.where(rng.random(m) < topic_mix, planted, background[_draw(cdf, rng.random(m))])
        yield words, (int(first[i]), int(second[i]))
