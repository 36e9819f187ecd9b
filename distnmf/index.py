"""Similarity indexes held in memory: the unit-normalised rows of W (or of Hᵀ), searched exactly, and
for large W a faiss HNSW or IVF index over them.

An index is built once per factors store and axis, persisted inside the store (``similarity/<axis>/``:
``vectors.npy``, ``faiss.index``, ``meta.json``, written atomically) so that a restart loads instead of
rebuilding (memory-mapped from a local folder: processes serving the same store share its pages), and
kept in an :class:`IndexCache` that evicts the least recently used index beyond a memory budget. The
approximate index's search depth is tuned at build time until its recall@10 against the exact answer reaches
:data:`TARGET_RECALL` on sampled queries; "least similar" queries are always exact.

IVF is tried first: NMF's W is sparse and non-negative, its rows fall into few supports, and an IVF
index's k-means lists follow them (on a 1,000,000 x 20 W of tag data, recall@10 1.0 at nprobe 32),
while HNSW's graph fragments between supports (0.98 at efSearch 64, single queries at 0) and builds
4x slower. Repeated rows (items with the same tags) are indexed once and expanded at query time.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from distnmf import storage
from distnmf.factors import Factors
from distnmf.storage import atomic_path

log = logging.getLogger("distnmf.index")

INDEX_VERSION = 4
APPROXIMATE_FROM = 200_000  # rows from which an approximate index pays (an exact query costs ~1 ms per 150k rows)
APPROXIMATE_KINDS = ("ivf", "hnsw")  # tried in this order; see build()
TARGET_RECALL = 0.995  # recall@10 the search depth is tuned to at build time (checked >= 0.99 in tests and bench)
IVF_LISTS_PER_SQRT = 4  # IVF lists: 4 sqrt(n)
IVF_TRAIN_PER_LIST = 40  # k-means training vectors per list
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
_LINK_BYTES = {"ivf": 8, "hnsw": 2 * HNSW_M * 4}  # per vector: IVF's id, HNSW's level-0 links
EXACT_CHUNK_BYTES = 64 * 2**20  # score matrix held at once by a batched exact search
TUNING_QUERIES = 300
COMPONENT_TOP = 1000  # rows kept per component, largest weight first (the service's max_k by default)
DEFAULT_MEMORY_BYTES = 2 * 2**30


def normalize_rows(A: np.ndarray) -> np.ndarray:
    """Rows of A (m, k) scaled to unit L2 norm; all-zero rows stay zero. float32."""
    A = np.asarray(A, dtype=np.float32)
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return A / np.where(norms > 0, norms, 1.0)


def top_k(scores: np.ndarray, k: int, least: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best entries of a score vector (n,), NaN never chosen: (indices, scores), best first,
    ties broken by the lower index (all entries tied with the k-th are considered)."""
    key = scores if least else -scores
    key = np.where(np.isnan(key), np.inf, key)
    if k < len(key):
        threshold = np.partition(key, k - 1)[k - 1]
        candidates = np.flatnonzero(key <= threshold)
    else:
        candidates = np.arange(len(key))
    candidates = candidates[np.isfinite(key[candidates])]
    order = np.lexsort((candidates, key[candidates]))[:k]
    chosen = candidates[order]
    return chosen.astype(np.int64), scores[chosen]


@dataclass
class SimilarityIndex:
    """Unit-normalised vectors (n, k) float32 and, for large n, a faiss inner-product index over them.

    ``kind`` is "exact", "ivf" or "hnsw"; ``depth`` is the tuned nprobe (IVF) or efSearch (HNSW);
    ``recall`` is the recall@10 measured against exact search when it was built. The faiss index holds
    each distinct vector once: when rows repeat, ``members`` (n,) lists the rows grouped by distinct
    vector (ascending within a group) and ``starts`` (n_distinct + 1,) where each group begins, so a hit
    on a distinct vector stands for all its rows. ``top_rows`` and ``top_values`` (dim, T) hold, per
    component, the T rows with the largest raw weight, best first.
    """

    vectors: np.ndarray
    top_rows: np.ndarray
    top_values: np.ndarray
    kind: str = "exact"
    approximate: Any = None
    depth: int | None = None
    recall: float | None = None
    members: np.ndarray | None = None
    starts: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """Memory held: the vectors, the component tops, the groups and faiss's copy with its links or ids."""
        held = self.vectors.nbytes + self.top_rows.nbytes + self.top_values.nbytes
        held += sum(a.nbytes for a in (self.members, self.starts) if a is not None)
        if self.approximate is not None:
            held += self.approximate.ntotal * (4 * self.vectors.shape[1] + _LINK_BYTES[self.kind])
        return held

    def top_of_component(self, component: int, top: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``top`` rows with the largest weight in ``component`` (best first, ties by index), or
        None when more than the kept T are asked for."""
        if top > self.top_rows.shape[1]:
            return None
        return self.top_rows[component, :top], self.top_values[component, :top]

    def search(self, queries: np.ndarray, k: int, least: bool = False,
               exclude: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``k`` nearest (cosine; ``least``: farthest) vectors to each query row (q, dim).

        ``exclude`` (q,) gives one index per query to leave out (-1: none). Returns per query
        ``(indices, scores)``, best first, ties by index. Approximate when the index has a faiss part
        and not ``least``.
        """
        queries = normalize_rows(np.atleast_2d(queries))
        exclude = np.full(len(queries), -1) if exclude is None else np.asarray(exclude)
        if self.approximate is not None and not least:
            return self._search_approximate(queries, k, exclude)
        return self._search_exact(queries, k, least, exclude)

    def _search_exact(self, queries: np.ndarray, k: int, least: bool,
                      exclude: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        n = len(self.vectors)
        step = max(1, EXACT_CHUNK_BYTES // (4 * max(1, n)))
        out = []
        for a in range(0, len(queries), step):
            scores = queries[a:a + step] @ self.vectors.T
            for row, skip in zip(scores, exclude[a:a + step]):
                if skip >= 0:
                    row[skip] = np.nan
                out.append(top_k(row, k, least))
        return out

    def _search_approximate(self, queries: np.ndarray, k: int,
                            exclude: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        fetch = min(self.approximate.ntotal, k + 1)  # k + 1 distinct vectors hold at least k other rows
        if len(queries) <= 2:
            faiss.omp_set_num_threads(1)  # per calling thread: concurrent requests each use one core
        scores, ids = self.approximate.search(queries, fetch)
        out = []
        for found, found_scores, skip in zip(ids, scores, exclude):
            keep = found >= 0
            rows, row_scores = self._expand(found[keep], found_scores[keep], k + 1)
            keep = rows != skip
            rows, row_scores = rows[keep], row_scores[keep]
            order = np.lexsort((rows, -row_scores))[:k]
            out.append((rows[order], row_scores[order]))
        return out

    def _expand(self, distinct: np.ndarray, scores: np.ndarray, most: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of the distinct vectors found (up to ``most`` per vector, lowest first), with their scores."""
        if self.members is None or self.starts is None:
            return distinct.astype(np.int64), scores
        groups = [self.members[self.starts[d]:min(self.starts[d + 1], self.starts[d] + most)] for d in distinct]
        return np.concatenate(groups), np.repeat(scores, [len(g) for g in groups])


# --------------------------------------------------------------------------- building


def build(vectors: np.ndarray, *, approximate_from: int = APPROXIMATE_FROM,
          kinds: tuple[str, ...] = APPROXIMATE_KINDS, seed: int = 0) -> SimilarityIndex:
    """An index over the rows of ``vectors`` (n, dim): exact below ``approximate_from`` rows, else the
    first of ``kinds`` ("ivf", "hnsw") whose search depth, tuned on sampled queries, reaches
    :data:`TARGET_RECALL`, built over the distinct unit vectors (rows repeating a vector are found
    with it); exact when none does."""
    unit = normalize_rows(vectors)
    n, dim = unit.shape
    tops = [top_k(np.asarray(column, dtype=np.float32), min(n, COMPONENT_TOP)) for column in np.asarray(vectors).T]
    top_rows, top_values = np.stack([t[0] for t in tops]), np.stack([t[1] for t in tops])
    index = SimilarityIndex(unit, top_rows, top_values)
    if kind_for(n, approximate_from) == "exact":
        return index
    distinct, group_of = np.unique(unit, axis=0, return_inverse=True)
    if len(distinct) < n:
        index.members = np.argsort(group_of.ravel(), kind="stable").astype(np.int64)
        index.starts = np.concatenate([[0], np.cumsum(np.bincount(group_of.ravel()))]).astype(np.int64)
    else:
        distinct = unit  # every row is distinct: faiss ids are row numbers
    for kind in kinds:
        approximate, depths = _faiss_index(kind, np.ascontiguousarray(distinct), seed)
        index.kind, index.approximate = kind, approximate
        if _tune(index, depths, seed) >= TARGET_RECALL:
            return index
        log.warning("a %s index over %d rows reaches recall@10 %.4f < %.3f at its deepest search", kind, n,
                    index.recall, TARGET_RECALL)
    log.warning("no approximate index reaches the recall target over these %d rows: answering exactly", n)
    return SimilarityIndex(unit, top_rows, top_values)


def _faiss_index(kind: str, distinct: np.ndarray, seed: int) -> tuple[faiss.Index, tuple[int, ...]]:
    """A faiss inner-product index of ``kind`` over ``distinct`` (u, dim), and the search depths to try."""
    u, dim = distinct.shape
    if kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        hnsw.add(distinct)
        return hnsw, (32, 64, 128, 256, 512, 1024)
    if kind != "ivf":
        raise ValueError(f"kind must be 'ivf' or 'hnsw', got {kind!r}")
    n_lists = max(1, int(IVF_LISTS_PER_SQRT * np.sqrt(u)))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, n_lists, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).choice(u, min(u, IVF_TRAIN_PER_LIST * n_lists), replace=False)
    ivf.train(distinct[np.sort(sample)])
    ivf.add(distinct)
    return ivf, tuple(d for d in (8, 16, 32, 64, 128, 256, 512) if d <= n_lists // 2) or (1,)


def _set_depth(index: SimilarityIndex, depth: int) -> None:
    if index.kind == "hnsw":
        index.approximate.hnsw.efSearch = depth
    else:
        index.approximate.nprobe = depth
    index.depth = depth


def _tune(index: SimilarityIndex, depths: tuple[int, ...], seed: int, k: int = 10) -> float:
    """Set the smallest search depth whose recall@k on sampled rows reaches TARGET_RECALL (else the
    deepest) and return that recall. A hit counts when its exact cosine reaches the exact k-th best
    (rows tied with the k-th are equally right answers)."""
    n = len(index.vectors)
    rng = np.random.default_rng(seed + 1)
    rows = rng.choice(n, min(n, TUNING_QUERIES), replace=False)
    queries = index.vectors[rows]
    nonzero = np.any(queries != 0, axis=1)
    rows, queries = rows[nonzero], queries[nonzero]
    kth = np.array([scores[-1] for _, scores in index._search_exact(queries, k, False, rows)])
    for depth in depths:
        _set_depth(index, depth)
        found = index._search_approximate(queries, k, rows)
        index.recall = float(np.mean([np.sum(index.vectors[ids] @ q >= t - 1e-6) / k
                                      for (ids, _), q, t in zip(found, queries, kth)]))
        if index.recall >= TARGET_RECALL:
            break
    log.info("%s index over %d rows: depth %d, recall@%d %.4f", index.kind, n, index.depth, k, index.recall)
    return index.recall or 0.0


# --------------------------------------------------------------------------- persistence


def axis_vectors(factors: Factors, axis: str) -> np.ndarray:
    """W (n_rows, k) for ``axis="rows"``, Hᵀ (n_cols, k) for ``axis="columns"``, read whole."""
    if axis == "rows":
        return factors.read_W()
    if axis == "columns":
        return np.ascontiguousarray(factors.H.T)
    raise ValueError(f"axis must be 'rows' or 'columns', got {axis!r}")


def index_path(factors: Factors, axis: str) -> storage.Location:
    return storage.join(factors.path, "similarity", axis)


def _save_npy(path: storage.Location, name: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    storage.write_bytes(storage.join(path, name), buffer.getvalue())


def _load_npy(path: storage.Location, name: str) -> np.ndarray:
    """An array of the index; memory-mapped read-only from a local folder, so that the service's
    processes share its pages instead of each holding a copy."""
    location = storage.join(path, name)
    if isinstance(location, Path):
        return np.load(location, mmap_mode="r").view(np.ndarray)  # a plain array: no memmap cost per slice
    return np.load(io.BytesIO(storage.read_bytes(location)))


def _load_faiss(path: storage.Location) -> faiss.Index:
    """The faiss index of the index; from a local folder its vectors and inverted lists stay in the
    file's mapping (shared between processes). ``IO_FLAG_MMAP_IFC`` maps the file as it is and
    searches as fast as a copy in memory; ``IO_FLAG_MMAP`` searched 8-20x slower (0.4-1.2 ms
    against 0.05 ms per single query on the 1,000,000 x 20 IVF index of bench/serving.py)."""
    location = storage.join(path, "faiss.index")
    if isinstance(location, Path):
        return faiss.read_index(str(location), faiss.IO_FLAG_MMAP_IFC)
    return faiss.deserialize_index(np.frombuffer(storage.read_bytes(location), dtype=np.uint8))


def save(index: SimilarityIndex, path: storage.Location, built_as: str | None = None) -> None:
    """Write an index directory (a folder or a URL prefix) atomically, replacing an older one;
    ``meta.json`` is its publication marker. ``built_as`` is what was asked for, "exact" or
    "approximate" (an approximate index that fell back to exact is not rebuilt on every load)."""
    with atomic_path(path, overwrite=True) as tmp:
        _save_npy(tmp, "vectors.npy", index.vectors)
        _save_npy(tmp, "top_rows.npy", index.top_rows)
        _save_npy(tmp, "top_values.npy", index.top_values)
        if index.members is not None and index.starts is not None:
            _save_npy(tmp, "members.npy", index.members)
            _save_npy(tmp, "starts.npy", index.starts)
        if index.approximate is not None:
            storage.write_bytes(storage.join(tmp, "faiss.index"), faiss.serialize_index(index.approximate).tobytes())
        meta = {"version": INDEX_VERSION, "kind": index.kind, "built_as": built_as or index.kind,
                "depth": index.depth, "recall": index.recall, "shape": list(index.vectors.shape),
                "grouped": index.members is not None}
        storage.write_bytes(storage.join(tmp, "meta.json"), json.dumps(meta).encode())


def load(path: storage.Location, shape: tuple[int, int], kind: str | None = None) -> SimilarityIndex | None:
    """The index stored at ``path`` if it exists and matches ``shape`` (and ``kind`` when given); else None."""
    try:
        meta = json.loads(storage.read_bytes(storage.join(path, "meta.json")))
    except (OSError, ValueError):
        return None
    if (meta.get("version") != INDEX_VERSION or tuple(meta.get("shape", ())) != tuple(shape)
            or kind not in (None, meta.get("built_as"))):
        return None
    index = SimilarityIndex(_load_npy(path, "vectors.npy"), _load_npy(path, "top_rows.npy"),
                            _load_npy(path, "top_values.npy"), meta["kind"], recall=meta["recall"])
    if meta["kind"] != "exact":
        if meta.get("grouped"):
            index.members, index.starts = _load_npy(path, "members.npy"), _load_npy(path, "starts.npy")
        index.approximate = _load_faiss(path)
        _set_depth(index, meta["depth"])
    return index


class IndexNotBuilt(LookupError):
    """A factors store has no persisted approximate index yet, and the caller does not build one."""


def build_for(factors: Factors, axis: str = "rows", *, approximate_from: int = APPROXIMATE_FROM,
              persist: bool = True, build_approximate: bool = True) -> SimilarityIndex:
    """Load the persisted index of a factors store, or build it (and persist it when the store is writable).
    A persisted index of another kind than ``approximate_from`` asks for is rebuilt. Without
    ``build_approximate``, :class:`IndexNotBuilt` instead of building an approximate index (a process
    that leaves that long build to another; an exact index costs one pass over the vectors)."""
    vectors_shape = (factors.shape[0] if axis == "rows" else factors.shape[1], factors.n_components)
    path = index_path(factors, axis)
    kind = kind_for(vectors_shape[0], approximate_from)
    index = load(path, vectors_shape, kind)
    if index is not None:
        return index
    if kind == "approximate" and not build_approximate:
        raise IndexNotBuilt(f"{factors.path} has no persisted {kind} index of its {axis}")
    index = build(axis_vectors(factors, axis), approximate_from=approximate_from)
    if persist:
        try:
            save(index, path, built_as=kind)
        except OSError as exc:  # a read-only store still serves from memory
            log.warning("could not persist the %s similarity index in %s: %s", axis, factors.path, exc)
    return index


def expected_nbytes(n: int, dim: int, kind: str) -> int:
    """Most memory an index of ``kind`` ("exact" or "approximate") over n vectors of ``dim`` holds: the
    vectors and each component's top rows, plus for faiss its copy of the vectors with their graph links
    (HNSW level 0) or ids (IVF), and the groups of repeated rows."""
    vectors = 4 * n * dim
    tops = 12 * dim * min(n, COMPONENT_TOP)
    if kind == "exact":
        return vectors + tops
    return 2 * vectors + tops + n * max(_LINK_BYTES.values()) + 16 * n


def kind_for(n: int, approximate_from: int = APPROXIMATE_FROM) -> str:
    """Whether :func:`build` makes an "exact" or an "approximate" index for n vectors."""
    return "exact" if n < max(approximate_from, 2) else "approximate"


# --------------------------------------------------------------------------- the cache


@functools.lru_cache(maxsize=4096)
def _canonical(path: storage.Location) -> str:
    """storage.canonical, remembered: resolving a path costs a system call per component, per query."""
    return storage.canonical(path)


class IndexCache:
    """Indexes by (factors store, axis), each loaded or built once, the least recently used evicted
    when the total passes ``max_bytes``. Safe to share between threads. Without ``build_approximate``,
    approximate indexes are only loaded once persisted (:class:`IndexNotBuilt` until then)."""

    def __init__(self, max_bytes: int = DEFAULT_MEMORY_BYTES, approximate_from: int = APPROXIMATE_FROM,
                 build_approximate: bool = True) -> None:
        self.max_bytes = max_bytes
        self.approximate_from = approximate_from
        self.build_approximate = build_approximate
        self._indexes: OrderedDict[tuple[str, str], SimilarityIndex] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

    def fits(self, factors: Factors, axis: str) -> bool:
        """Whether this store's index fits in the budget at all (else callers scan W out of core)."""
        n = factors.shape[0] if axis == "rows" else factors.shape[1]
        kind = kind_for(n, self.approximate_from)
        return expected_nbytes(n, factors.n_components, kind) <= self.max_bytes

    def loaded(self, factors: Factors, axis: str) -> SimilarityIndex | None:
        """The index if it is in memory now (never loads or builds), else None."""
        key = (_canonical(factors.path), axis)
        with self._lock:
            index = self._indexes.get(key)
            if index is not None:
                self._indexes.move_to_end(key)
            return index

    def get(self, factors: Factors, axis: str) -> SimilarityIndex:
        key = (_canonical(factors.path), axis)
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._indexes:
                    return self._indexes[key]
            try:
                index = build_for(factors, axis, approximate_from=self.approximate_from,
                                  build_approximate=self.build_approximate)
            except IndexNotBuilt:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._indexes[key] = index
                self._evict(keep=key)
                self._loading.pop(key, None)
            return index

    def discard(self, path: str | Path) -> None:
        """Forget the indexes of a factors store (e.g. when it is deleted)."""
        resolved = storage.canonical(path)
        with self._lock:
            for key in [key for key in self._indexes if key[0] == resolved]:
                del self._indexes[key]

    def clear(self) -> None:
        """Forget every index (another process deleted or replaced factors)."""
        with self._lock:
            self._indexes.clear()

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(index.nbytes for index in self._indexes.values())

    def __len__(self) -> int:
        return len(self._indexes)

    def _evict(self, keep: tuple[str, str]) -> None:
        total = sum(index.nbytes for index in self._indexes.values())
        for key in list(self._indexes):
            if total <= self.max_bytes:
                break
            if key != keep:
                total -= self._indexes.pop(key).nbytes
                log.info("evicted the similarity index of %s (%s)", *key)


default_cache = IndexCache()
