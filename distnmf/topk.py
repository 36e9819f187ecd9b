"""Exact top-k over row blocks: each block keeps its best candidates (ties included), the
merge keeps the best of all. Pure numpy, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distnmf.wire import Hit


def block_candidates(scores: np.ndarray, offset: int, k: int, least: bool = False,
                     exclude: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The best ``k`` entries of each row of a score block, with global indices.

    Parameters
    ----------
    scores : ndarray of shape (n_queries, m)
        Scores of the block's m items (global positions ``offset .. offset + m``) per query.
    k : entries kept per query; ties at the k-th score are all kept, so merging is exact.
    least : keep the lowest scores instead of the highest.
    exclude : optional int array (n_queries,) of a global index to skip per query (-1: none).

    Returns
    -------
    One ``(indices, scores)`` pair per query, unsorted.
    """
    key = scores if least else -scores
    out = []
    for q in range(scores.shape[0]):
        row = key[q].astype(np.float64)
        if exclude is not None and offset <= exclude[q] < offset + row.shape[0]:
            row[exclude[q] - offset] = np.inf
        keep = np.flatnonzero(np.isfinite(row))
        if len(keep) > k:
            threshold = np.partition(row[keep], k - 1)[k - 1]
            keep = keep[row[keep] <= threshold]
        out.append((keep + offset, scores[q, keep]))
    return out


def merge_candidates(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int,
                     least: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-block candidates of one query into the exact top ``k``: (indices, scores),
    best first, ties broken by the lower index."""
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    idx = np.concatenate([p[0] for p in parts]).astype(np.int64)
    val = np.concatenate([p[1] for p in parts])
    order = np.lexsort((idx, val if least else -val))[:k]
    return idx[order], val[order]


def hits(indices: np.ndarray, scores: np.ndarray, labels: np.ndarray | None) -> list[Hit]:
    return [Hit(int(i), None if labels is None else str(labels[i]), float(s)) for i, s in zip(indices, scores)]
