"""Item x tag occurrence sets with Zipf tag popularity and planted topics."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from distnmf.ingest.report import progress
from distnmf.matrixwriter import MatrixWriter
from distnmf.store import Matrix
from distnmf.synth.blocks import (
    CALIBRATE,
    GEN_ROWS,
    TAG_SPLIT,
    TAGS,
    atomic_text,
    block_range,
    draw,
    make_labels,
    n_blocks,
    seeded_rng,
    zipf_cdf,
)


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

    def block(self, b: int, kind: int = TAGS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, indices, topics)`` of item block ``b``: CSR structure of shape
        (rows, n_tags) with sorted unique tags per item, and topics of shape (rows, 2)."""
        start, stop = block_range(b, self.n_items)
        n = stop - start
        rng = seeded_rng(self.seed, kind, b)
        first = rng.integers(self.n_topics, size=n)
        second = np.where(rng.random(n) < self.second_topic, rng.integers(self.n_topics, size=n), first)
        counts = np.maximum(1, rng.poisson(self.mean_tags, size=n))
        item = np.repeat(np.arange(n), counts)
        total = int(counts.sum())
        topic = np.where(rng.random(total) < 0.5, second[item], first[item])
        from_topic = rng.random(total) < self.topic_mix
        planted = self.topic_tags[topic, rng.integers(self.topic_size, size=total)]
        background = draw(self.cdf, rng.random(total))
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
    rng = seeded_rng(seed, TAGS)
    needed = n_topics * topic_size
    skip = min(10, n_tags - needed)  # the most popular tags stay generic, as in real tag sets
    chosen = rng.choice(np.arange(skip, n_tags), size=needed, replace=False)
    topic_tags = np.sort(chosen.reshape(n_topics, topic_size), axis=1)
    model = _TagModel(n_items, n_tags, n_topics, topic_size, n_assignments / n_items, topic_mix,
                      second_topic, seed, zipf_cdf(n_tags, zipf_exponent), topic_tags)
    # Repeated draws of a tag on one item merge; calibrate the mean on a pilot block so the
    # expected number of distinct assignments is n_assignments.
    pilot_rows = min(n_items, GEN_ROWS)
    indptr, _, _ = replace(model, n_items=pilot_rows).block(0, kind=CALIBRATE)
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
    with MatrixWriter(path, n_tags, sparse=True, overwrite=overwrite, row_labels=make_labels("item", n_items),
                      col_labels=labels.tolist(), attrs=attrs) as writer:
        for b in progress(range(n_blocks(n_items)), total=n_blocks(n_items), desc="synth tags",
                          unit="block", enabled=show_progress):
            indptr, indices, topics = model.block(b)
            start, stop = block_range(b, n_items)
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
    ids = make_labels("item", n_items)
    item_topics = np.empty((n_items, 2), dtype=np.int64)
    with atomic_text(path, overwrite) as f:
        for b in progress(range(n_blocks(n_items)), total=n_blocks(n_items), desc="synth tag records",
                          unit="block", enabled=show_progress):
            indptr, indices, topics = model.block(b)
            start, stop = block_range(b, n_items)
            item_topics[start:stop] = topics
            high = seeded_rng(seed, TAG_SPLIT, b).random(len(indices)) < 0.5
            names = labels[indices]
            for i in range(stop - start):
                lo, hi = indptr[i], indptr[i + 1]
                record = {"id": ids[start + i], "high_conf_tags": names[lo:hi][high[lo:hi]].tolist(),
                          "low_conf_tags": names[lo:hi][~high[lo:hi]].tolist()}
                f.write(json.dumps(record) + "\n")
    return PlantedTags(Path(path), model.topic_tags, item_topics, labels)
