"""Any input matrix as a sequence of row blocks that can be read in any process.

Stores are read block by block straight from Zarr inside tasks; in-memory arrays are sliced
(and scattered once to a cluster); Dask arrays are computed block by block.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr

from distnmf.kernels import Block
from distnmf.storage import Location
from distnmf.store import Matrix, local_array_matrix, open_matrix, read_rows
from distnmf.validation import check_2d, check_real_dtype

SPARSE_TARGET_NNZ = 2**21

RowReader = Callable[[int, int], Block]
"""``read(start, stop)``: rows ``start:stop`` of X, in whatever process calls it (picklable)."""


@dataclass(frozen=True)
class StoreReader:
    """Picklable reader of rows ``start:stop`` of a matrix store."""

    path: Location
    is_sparse: bool
    n_cols: int
    component: str = "X"

    def __call__(self, start: int, stop: int) -> Block:
        return read_rows(self.path, self.is_sparse, start, stop, self.n_cols, self.component)


@dataclass(frozen=True)
class DaskReader:
    """Picklable reader of rows of a Dask array.

    A lazy array's rows are computed in the calling process (synchronously, no nested tasks).
    A *persisted* array (``persisted``: its graph holds ``distributed`` futures) can only be
    computed by its cluster, which holds its chunks: the rows are a task of their own there,
    launched from the calling task (seceding from its worker's thread pool meanwhile).
    """

    array: da.Array
    persisted: bool = False

    def __call__(self, start: int, stop: int) -> Block:
        rows = self.array[start:stop]
        block = _compute_on_cluster(rows) if self.persisted else rows.compute(scheduler="sync")
        return sp.csr_array(block) if sp.issparse(block) else np.asarray(block)


def _holds_futures(array: da.Array) -> bool:
    """Whether ``array`` was persisted on a ``distributed`` cluster (its graph holds futures)."""
    if "distributed" not in sys.modules:  # no future can exist; don't pay for the import
        return False
    from distributed import futures_of

    return bool(futures_of(array))


def _compute_on_cluster(rows: da.Array) -> Block:
    """``rows`` computed by the cluster its futures belong to, from a task or from a client process."""
    from distributed import futures_of, get_worker, worker_client

    try:
        get_worker()
    except ValueError:  # not inside a task: the futures' own client computes it
        return futures_of(rows)[0].client.compute(rows).result()
    with worker_client() as client:
        return client.compute(rows).result()


@dataclass(frozen=True)
class BlockRef:
    """A row block to be read where it is used: ``read(start, stop)``."""

    read: RowReader
    start: int
    stop: int

    def load(self) -> Block:
        return as_float32(self.read(self.start, self.stop))


def as_float32(block: Block) -> Block:
    if sp.issparse(block):
        block = sp.csr_array(block)
        return block if block.dtype == np.float32 else block.astype(np.float32)
    return np.ascontiguousarray(block, dtype=np.float32)


def materialize(x: Block | BlockRef) -> Block:
    """The block itself, reading it first if it is a :class:`BlockRef`."""
    return x.load() if isinstance(x, BlockRef) else x


@dataclass
class BlockSource:
    """X of shape (n_rows, n_cols) split into row blocks ``bounds[i]:bounds[i+1]``.

    Exactly one of ``array`` (in memory, sliced) or ``reader`` (reads a row range anywhere)
    is set.
    """

    shape: tuple[int, int]
    bounds: tuple[int, ...]
    is_sparse: bool
    nnz: int
    nbytes: int
    array: np.ndarray | sp.csr_array | None = None
    reader: RowReader | None = None
    matrix: Matrix | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.array is None) == (self.reader is None):
            raise ValueError("a BlockSource holds exactly one of array (in memory) and reader (rows read anywhere)")

    @property
    def n_blocks(self) -> int:
        return len(self.bounds) - 1

    @property
    def out_of_core(self) -> bool:
        """True when X lives on disk (or in a Dask graph) rather than in this process."""
        return self.array is None

    def block(self, i: int) -> Block | BlockRef:
        """Block i: the array slice when in memory, else a :class:`BlockRef` to read it."""
        a, b = self.bounds[i], self.bounds[i + 1]
        if self.array is not None:
            return self.array[a:b]
        assert self.reader is not None  # __post_init__: exactly one of array and reader is set
        return BlockRef(self.reader, a, b)


def as_source(X: Any, *, n_blocks_hint: int = 1, task_memory: int | None = None,
              temporaries: int = 1) -> BlockSource:
    """Wrap a path, :class:`Matrix`, numpy / scipy.sparse / Dask / Zarr array as a BlockSource.

    ``n_blocks_hint`` asks for at least that many row blocks (e.g. 2 per worker) so the work
    spreads over a cluster. With ``task_memory`` (bytes one task may use), dense row blocks
    are small enough that a task's working set fits: the block as read, its float32 copy and
    ``temporaries`` float32 arrays of the block's size; a storage chunk larger than that is
    read in several row blocks. Raises ``FileNotFoundError`` / ``ValueError`` for bad input.
    """
    if isinstance(X, (str, os.PathLike)):
        X = open_matrix(X)
    if isinstance(X, zarr.Array):
        X = local_array_matrix(X) or da.from_zarr(X)
    if isinstance(X, Matrix):
        return _store_source(X, n_blocks_hint, _row_limit(X.shape[1], X.dtype.itemsize, task_memory, temporaries))
    if isinstance(X, da.Array):
        return _dask_source(X, n_blocks_hint, _row_limit(X.shape[1], X.dtype.itemsize, task_memory, temporaries))
    if sp.issparse(X):
        X = sp.csr_array(X)
        X = X if X.dtype == np.float32 else X.astype(np.float32)
        m, n = check_2d(X.shape)
        bounds = _sparse_bounds(m, X.nnz, n_blocks_hint)
        return BlockSource((m, n), bounds, True, X.nnz, X.data.nbytes + X.indices.nbytes, array=X)
    X = np.ascontiguousarray(X, dtype=np.float32)
    m, n = check_2d(X.shape)
    max_rows = min(_row_limit(n, 4, task_memory, temporaries), max(1, 2**25 // (4 * n)))
    bounds = _even_bounds(m, max(n_blocks_hint, -(-m // max_rows)))
    return BlockSource((m, n), bounds, False, m * n, X.nbytes, array=X)


def _store_source(matrix: Matrix, n_blocks_hint: int, max_rows: int) -> BlockSource:
    m, n = matrix.shape
    if matrix.is_sparse:
        bounds = _sparse_bounds(m, matrix.nnz, n_blocks_hint)
    elif matrix.n_blocks >= n_blocks_hint:
        bounds = _split_blocks(matrix.row_bounds, max_rows)  # storage chunks, split when too large
    else:
        bounds = _even_bounds(m, max(n_blocks_hint, -(-m // max_rows)))
    return BlockSource((m, n), tuple(bounds), matrix.is_sparse, matrix.nnz, matrix.nbytes,
                       reader=StoreReader(matrix.path, matrix.is_sparse, n, matrix.component), matrix=matrix,
                       attrs=dict(matrix.attrs))


def _dask_source(X: da.Array, n_blocks_hint: int, max_rows: int) -> BlockSource:
    m, n = check_2d(X.shape)
    is_sparse = sp.issparse(X._meta)
    check_real_dtype(X.dtype)
    chunks = X.chunks[0]
    uniform = len(set(chunks[:-1])) <= 1 and chunks[-1] <= chunks[0]
    if uniform and len(chunks) >= n_blocks_hint:
        bounds = _split_blocks((0,) + tuple(int(b) for b in np.cumsum(chunks)), max_rows)
    else:
        bounds = _even_bounds(m, max(n_blocks_hint, -(-m // max_rows)))
    itemsize = 4
    nnz = m * n
    nbytes = m * n * itemsize
    if is_sparse:
        nnz = int(dask.compute(da.map_blocks(lambda b: np.array([[b.nnz]]), X, chunks=(1, 1),
                                             dtype=np.int64, meta=np.array([[0]])).sum())[0])
        nbytes = nnz * 8
    return BlockSource((m, n), bounds, is_sparse, nnz, nbytes, reader=DaskReader(X.rechunk({1: -1}), _holds_futures(X)))


def _row_limit(n_cols: int, itemsize: int, task_memory: int | None, temporaries: int) -> int:
    """The most rows of a dense block whose task working set fits in ``task_memory`` bytes."""
    if task_memory is None:
        return 2**62
    row_bytes = n_cols * (itemsize + (4 if itemsize != 4 else 0) + 4 * temporaries)
    return max(1, task_memory // row_bytes)


def _split_blocks(bounds: tuple[int, ...] | list[int], max_rows: int) -> tuple[int, ...]:
    """Chunk-aligned ``bounds`` (equal blocks but the last) with blocks of more than ``max_rows``
    rows split into equal parts (dividing the chunk when a near count does), so the blocks stay
    equal and a W array chunked by block has exactly one writer per chunk."""
    chunk, n_rows = bounds[1] - bounds[0], bounds[-1]
    if chunk <= max_rows:
        return tuple(bounds)
    fewest = -(-chunk // max_rows)
    parts = next((p for p in range(fewest, 2 * fewest + 1) if chunk % p == 0), fewest)
    return tuple(range(0, n_rows, -(-chunk // parts))) + (n_rows,)


def _even_bounds(n_rows: int, n_blocks: int) -> tuple[int, ...]:
    n_blocks = max(1, min(n_rows, n_blocks))
    rows = -(-n_rows // n_blocks)
    return tuple(range(0, n_rows, rows)) + (n_rows,)


def _sparse_bounds(n_rows: int, nnz: int, n_blocks_hint: int) -> tuple[int, ...]:
    return _even_bounds(n_rows, max(n_blocks_hint, -(-nnz // SPARSE_TARGET_NNZ)))
