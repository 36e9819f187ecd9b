"""Queries on a factorization: topics, similar rows and columns, co-occurrence, recommendations,
and fold-in of new rows.

Every query that touches W (n_rows, k) or X (n_rows, n_cols) reads them in row blocks, one task
per block on the runner (the active Dask cluster, else in-process), so they work when W or X is
larger than memory; only per-block candidates (at most ``k`` per query) or one length-n_cols
vector per block travel back. The pure numerical parts (``block_candidates``,
``merge_candidates``, ``column_cooccurrence``) hold no I/O.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import scipy.sparse as sp

from distnmf.factors import Factors
from distnmf.index import IndexCache, SimilarityIndex, default_cache, normalize_rows
from distnmf.lookup import AXES, IndexOutOfRangeError, UnknownLabelError, check_axis, check_k, resolve_index
from distnmf.runner import make_runner
from distnmf.source import BlockSource, as_source, materialize
from distnmf.store import Matrix, open_matrix
from distnmf.topk import block_candidates, hits, merge_candidates
from distnmf.wire import Hit

__all__ = ["AXES", "METHODS", "Hit", "IndexOutOfRangeError", "UnknownLabelError", "block_candidates",
           "column_cooccurrence", "cooccurring", "merge_candidates", "recommend", "resolve_index", "similar",
           "similar_in", "similar_to_vector", "top_components", "transform"]

METHODS = ("auto", "index", "scan")


def _cosine_candidates(block: np.ndarray, offset: int, Q: np.ndarray, k: int, least: bool,
                       exclude: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cosine of each query row of Q (q, k_c), already unit-norm, with the block's rows (m, k_c)."""
    return block_candidates(Q @ normalize_rows(block).T, offset, k, least, exclude)


def _column_candidates(block: np.ndarray, offset: int, component: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return block_candidates(np.asarray(block[:, component], dtype=np.float32)[None, :], offset, k)


def _scan_w(factors: Factors, fn: Any, *args: Any, block_rows: int | None = None) -> list[list[tuple]]:
    """Run ``fn(W_block, offset, *args)`` on every row block of W (one task each, on the runner)."""
    W = factors.W
    if block_rows is not None:
        if block_rows < 1:
            raise ValueError(f"block_rows must be >= 1, got {block_rows}")
        W = W.rechunk((block_rows, W.shape[1]))
    return _map_row_blocks("nmf-scan-W", as_source(W), fn, *args)


def _map_row_blocks(name: str, source: BlockSource, fn: Any, *args: Any, reduce: bool = False) -> Any:
    """``fn(block, start_row, *args)`` on every row block of ``source``, as tasks named ``name`` on
    the runner (the active cluster, else in-process): the list of results, or their sum."""
    runner = make_runner()
    try:
        results = runner.map(name, _on_block, runner.load(source, keep=False), list(source.bounds[:-1]),
                             shared=(fn, *args))
        return runner.reduce(results, f"{name}-sum") if reduce else runner.gather(results)
    finally:
        runner.close()


def _on_block(block: Any, start: int, fn: Any, *args: Any) -> Any:
    return fn(materialize(block), start, *args)


def _query_topk(results: list[list[tuple]], n_queries: int, k: int, least: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    return [merge_candidates([r[q] for r in results], k, least) for q in range(n_queries)]


# --------------------------------------------------------------------------- queries on factors


def top_components(factors: Factors, component: int, top: int = 10, *, method: str = "auto",
                   cache: IndexCache | None = None) -> dict:
    """The rows with the largest ``W[:, component]`` and the columns with the largest ``H[component]``.

    Returns ``{"component": c, "rows": [Hit ...], "columns": [Hit ...]}``, each list best first
    and at most ``top`` long (shorter only when the axis has fewer entries). The rows come from
    the store's in-memory index (which keeps each component's top rows) as in :func:`similar`,
    else (``method="scan"``, or more rows than the index keeps) from a scan of W in row blocks.
    """
    k_c = factors.n_components
    if isinstance(component, bool) or not isinstance(component, (int, np.integer)) or not 0 <= component < k_c:
        raise ValueError(f"component must be an integer in 0..{k_c - 1} (the fit has {k_c} components), "
                         f"got {component!r}")
    check_k(top, max(factors.shape), "rows or columns", name="top")
    n_rows, n_cols = factors.shape
    in_memory = _index_for(factors, "rows", method, cache)
    rows = in_memory.top_of_component(int(component), min(top, n_rows)) if in_memory is not None else None
    if rows is None:
        rows = _query_topk(_scan_w(factors, _column_candidates, int(component), min(top, n_rows)), 1,
                           min(top, n_rows), False)[0]
    h = factors.H[int(component)][None, :]
    cols = merge_candidates(block_candidates(h, 0, min(top, n_cols)), min(top, n_cols))
    return {"component": int(component), "rows": hits(*rows, factors.row_labels),
            "columns": hits(*cols, factors.col_labels)}


def _index_for(factors: Factors, axis: str, method: str, cache: IndexCache | None) -> SimilarityIndex | None:
    """The in-memory index to answer with, or None to scan W from storage (method "scan", or "auto"
    when the index would not fit the cache's memory budget)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    cache = default_cache if cache is None else cache
    if method == "scan" or (method == "auto" and not cache.fits(factors, axis)):
        return None
    return cache.get(factors, axis)


def similar(factors: Factors, key: str | int, k: int = 10, axis: str = "rows", least: bool = False,
            *, method: str = "auto", cache: IndexCache | None = None, block_rows: int | None = None) -> list[Hit]:
    """The ``k`` rows (or columns) most (or, with ``least``, least) similar to one of them.

    Similarity is the cosine of L2-normalised coefficient vectors: rows of W for
    ``axis="rows"``, rows of H^T for ``axis="columns"``. The query itself is excluded.

    ``method="index"`` answers from the store's in-memory :class:`~distnmf.index.SimilarityIndex`
    (loaded, or built and persisted, on first use, held in ``cache``, default
    ``distnmf.index.default_cache``): exact for small axes, faiss IVF (else HNSW) with tuned recall for
    large W; ``least`` is always exact. ``method="scan"`` reads W from storage in row blocks of
    ``block_rows`` (default: its storage chunks), one Dask task each, exactly: for W larger than
    memory. ``"auto"`` uses the index when it fits the cache's budget.
    """
    check_axis(axis)
    in_memory = _index_for(factors, axis, method, cache)
    if in_memory is not None:
        return similar_in(in_memory, factors, key, k, axis, least)
    n = factors.shape[0] if axis == "rows" else factors.shape[1]
    axis_name = axis[:-1]
    labels = factors.row_labels if axis == "rows" else factors.col_labels
    index = resolve_index(labels, key, n, axis_name, factors.row_positions if axis == "rows" else factors.col_positions)
    k = check_k(k, n - 1, f"other {axis}")
    exclude = np.array([index])
    HT = None if axis == "rows" else factors.H.T
    query = factors.read_W(index, index + 1) if HT is None else HT[index][None, :]
    _check_nonzero(query, f"{axis_name} {key!r}")
    Q = normalize_rows(query)
    if HT is None:
        results = _scan_w(factors, _cosine_candidates, Q, k, least, exclude, block_rows=block_rows)
    else:
        step = block_rows or len(HT)
        results = [_cosine_candidates(HT[a:a + step], a, Q, k, least, exclude) for a in range(0, len(HT), step)]
    return hits(*_query_topk(results, 1, k, least)[0], labels)


def similar_in(in_memory: SimilarityIndex, factors: Factors, key: str | int, k: int = 10, axis: str = "rows",
               least: bool = False) -> list[Hit]:
    """:func:`similar` answered from ``in_memory``, the loaded index of ``factors`` along ``axis``."""
    check_axis(axis)
    n = factors.shape[0] if axis == "rows" else factors.shape[1]
    labels = factors.row_labels if axis == "rows" else factors.col_labels
    index = resolve_index(labels, key, n, axis[:-1], factors.row_positions if axis == "rows" else factors.col_positions)
    k = check_k(k, n - 1, f"other {axis}")
    query = in_memory.vectors[index][None, :]
    _check_nonzero(query, f"{axis[:-1]} {key!r}")
    return hits(*in_memory.search(query, k, least, np.array([index]))[0], labels)


def similar_to_vector(factors: Factors, w: np.ndarray, k: int = 10, least: bool = False, *, method: str = "auto",
                      cache: IndexCache | None = None, block_rows: int | None = None) -> list[Hit]:
    """The ``k`` rows whose W row has the highest (lowest with ``least``) cosine with ``w`` (k_c,).
    ``method``, ``cache`` and ``block_rows`` as in :func:`similar`."""
    return _similar_to_vectors(factors, np.atleast_2d(np.asarray(w, dtype=np.float32)), k, least,
                               strict=True, method=method, cache=cache, block_rows=block_rows)[0]


def _similar_to_vectors(factors: Factors, Wq: np.ndarray, k: int, least: bool, strict: bool, *,
                        method: str = "auto", cache: IndexCache | None = None,
                        block_rows: int | None = None) -> list[list[Hit]]:
    """Nearest rows for each row of Wq (q, k_c); all-zero queries raise (strict) or get []."""
    if Wq.ndim != 2 or Wq.shape[1] != factors.n_components:
        raise ValueError(f"coefficient vector must have length n_components={factors.n_components}, "
                         f"got shape {Wq.shape[1:] if Wq.ndim == 2 else Wq.shape}")
    k = check_k(k, factors.shape[0], "rows")
    zero = ~np.any(Wq > 0, axis=1)
    if strict and zero.any():
        _check_nonzero(Wq[zero][:1], "the coefficient vector")
    if zero.all():
        return [[] for _ in range(len(Wq))]
    in_memory = _index_for(factors, "rows", method, cache)
    if in_memory is not None:
        pairs = in_memory.search(Wq, k, least)
    else:
        results = _scan_w(factors, _cosine_candidates, normalize_rows(Wq), k, least, None, block_rows=block_rows)
        pairs = _query_topk(results, len(Wq), k, least)
    labels = factors.row_labels
    return [[] if zero[q] else hits(*pair, labels) for q, pair in enumerate(pairs)]


def _check_nonzero(vectors: np.ndarray, what: str) -> None:
    if not np.any(vectors > 0):
        raise ValueError(f"{what} has an all-zero coefficient vector, so cosine similarity is undefined "
                         f"(it is not explained by any component)")


# --------------------------------------------------------------------------- queries on the data


def column_cooccurrence(block: np.ndarray | sp.sparray, column: int) -> np.ndarray:
    """``X_i^T x_c`` of shape (1, n_cols), float64: a block's contribution to column ``c`` of X^T X."""
    if sp.issparse(block):
        block = sp.csr_array(block)
        col = block[:, [column]].toarray().ravel()
    else:
        col = np.asarray(block[:, column])
    rows = np.flatnonzero(col)
    if len(rows) == 0:
        return np.zeros((1, block.shape[1]), dtype=np.float64)
    sub = block[rows]
    product = sub.T @ col[rows].astype(np.float64)
    return np.asarray(product, dtype=np.float64).reshape(1, -1)


def _cooccurrence_of_block(block: np.ndarray | sp.sparray, start: int, column: int) -> np.ndarray:
    return column_cooccurrence(block, column)


def cooccurring(matrix: Matrix | str | os.PathLike, key: str | int, k: int = 10) -> list[Hit]:
    """The ``k`` columns co-occurring most with column ``key``: the top of ``X^T x_c``.

    Computed block by block (one task per row block, tree-summed), never forming X^T X.
    Columns that never co-occur (score 0) and the column itself are left out, so fewer than
    ``k`` hits may come back.
    """
    matrix = open_matrix(matrix) if not isinstance(matrix, Matrix) else matrix
    n_rows, n_cols = matrix.shape
    labels = matrix.col_labels
    c = resolve_index(labels, key, n_cols, "column")
    k = check_k(k, n_cols - 1, "other columns")
    scores = _map_row_blocks("nmf-cooccurrence", as_source(matrix), _cooccurrence_of_block, c, reduce=True)[0]
    scores[c] = 0.0
    candidates = np.flatnonzero(scores > 0)
    idx, val = merge_candidates([(candidates, scores[candidates])], k)
    return hits(idx, val, labels)


def recommend(factors: Factors, matrix: Matrix | str | os.PathLike, key: str | int, k: int = 10) -> list[Hit]:
    """The ``k`` columns with the highest reconstructed score ``W_i H`` among those row ``i`` has
    no stored entry for (e.g. films a user has not rated). Fewer come back if fewer are unseen.

    With factors of a masked fit (``missing="unobserved"``, e.g. a rating table) each score is the
    predicted rating of an unrated item; with zero-filled factors it mixes "would rate highly"
    with "would rate at all", so popular items dominate.
    """
    matrix = open_matrix(matrix) if not isinstance(matrix, Matrix) else matrix
    if tuple(matrix.shape) != tuple(factors.shape):
        raise ValueError(f"matrix {matrix.path} has shape {matrix.shape} but the factors were fitted on "
                         f"shape {factors.shape}; pass the matrix the factors came from")
    n_rows, n_cols = factors.shape
    labels = factors.row_labels if factors.row_labels is not None else matrix.row_labels
    i = resolve_index(labels, key, n_rows, "row")
    k = check_k(k, n_cols, "columns")
    scores = (factors.read_W(i, i + 1) @ factors.H).ravel()
    row = matrix.read_rows(i, i + 1)
    seen = sp.csr_array(row).indices if sp.issparse(row) else np.flatnonzero(np.asarray(row).ravel())
    unseen = np.setdiff1d(np.arange(n_cols), seen, assume_unique=True)
    idx, val = merge_candidates([(unseen, scores[unseen])], k)
    col_labels = factors.col_labels if factors.col_labels is not None else matrix.col_labels
    return hits(idx, val, col_labels)


# --------------------------------------------------------------------------- new rows


def transform(factors: Factors, X_new: Any, similar_k: int = 0, *, cache: IndexCache | None = None,
            method: str = "auto") -> tuple[np.ndarray, list[list[Hit]]]:
    """Coefficients of new rows with H fixed, and optionally their nearest stored rows.

    Parameters
    ----------
    X_new : array-like of shape (r, n_cols) or (n_cols,): numpy, scipy.sparse, Dask, Matrix or path.
    similar_k : when > 0, also return the ``similar_k`` rows nearest (cosine on W) to each new row.
    cache, method : how the nearest rows are found, as in :func:`similar`.

    Returns
    -------
    W_new : ndarray of shape (r, n_components), float32
    neighbours : one list of :class:`Hit` per new row (empty when ``similar_k`` is 0 or the
        new row's coefficients are all zero).

    The loss, solver and W regularization of the original fit (``attrs["params"]``) are reused.
    """
    if isinstance(X_new, np.ndarray) and X_new.ndim == 1:
        X_new = X_new[None, :]
    if hasattr(X_new, "shape") and len(X_new.shape) == 2 and X_new.shape[1] != factors.shape[1]:
        raise ValueError(f"X_new has {X_new.shape[1]} columns but the factors have {factors.shape[1]}")
    W_new = np.asarray(factors.fold_in(X_new), dtype=np.float32)
    if similar_k < 0:
        raise ValueError(f"similar_k must be >= 0, got {similar_k}")
    if similar_k == 0:
        return W_new, [[] for _ in range(len(W_new))]
    return W_new, _similar_to_vectors(factors, W_new, similar_k, False, strict=False, method=method, cache=cache)
