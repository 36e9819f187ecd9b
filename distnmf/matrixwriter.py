"""Writing matrix stores (layout: :mod:`distnmf.store`): row blocks streamed in and validated as
they arrive, the store published atomically (:func:`distnmf.storage.publish`) only when complete."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
from numpy.typing import DTypeLike

from distnmf import storage
from distnmf.store import Matrix, chunk_bounds, open_matrix, row_block_ends
from distnmf.validation import check_2d, check_block
from distnmf.zarrnodes import compression_codecs, member, shrink_to_one_chunk, write_labels

FORMAT_VERSION = 1
DENSE_BLOCK_BYTES = 32 * 2**20
SPARSE_CHUNK_ELEMENTS = 2**22
INDPTR_CHUNK_ELEMENTS = 2**20
SPARSE_WRITE_ROWS = 2**16  # rows per block when save_matrix streams an in-memory sparse matrix

ArrayLike = Any  # numpy, scipy.sparse, dask array, zarr array or Matrix


@dataclass
class MatrixWriter:
    """Stream row blocks into a new matrix store; published atomically on ``close()``.

    Use as a context manager. Blocks are validated as they arrive; an exception inside the
    ``with`` body (or a bad block) removes the temporary store, leaving nothing behind.

    >>> with MatrixWriter("tags.zarr", n_cols=4204, sparse=True) as w:   # doctest: +SKIP
    ...     for block in blocks:
    ...         w.append(block)
    ...     w.row_labels, w.col_labels = ids, tags
    """

    path: str | os.PathLike
    n_cols: int
    sparse: bool = False
    dtype: DTypeLike = np.float32
    chunk_rows: int | None = None
    compression: str | None = None
    overwrite: bool = False
    row_labels: Iterable[Any] | None = None
    col_labels: Iterable[Any] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    validate: bool = True

    def __post_init__(self) -> None:
        location = self.path = storage.as_location(self.path)
        if storage.exists(location) and not self.overwrite:
            raise FileExistsError(f"{location} already exists; pass overwrite=True to replace it")
        if self.n_cols < 1:
            raise ValueError(f"n_cols must be >= 1, got {self.n_cols}")
        if isinstance(location, Path):
            location.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = storage.temporary_sibling(location)
        self._group = zarr.open_group(self._tmp, mode="w", zarr_format=3)
        self.n_rows = 0
        self._row_bounds = [0]
        compressors = compression_codecs(self.compression)
        if self.sparse:
            self._nnz = 0
            x = self._group.create_group("X")
            index_dtype = np.int32 if self.n_cols < 2**31 else np.int64
            self._data = x.create_array("data", shape=(0,), chunks=(SPARSE_CHUNK_ELEMENTS,),
                                        dtype=self.dtype, compressors=compressors)
            self._indices = x.create_array("indices", shape=(0,), chunks=(SPARSE_CHUNK_ELEMENTS,),
                                           dtype=index_dtype, compressors=compressors)
            self._indptr = x.create_array("indptr", shape=(1,), chunks=(INDPTR_CHUNK_ELEMENTS,), dtype=np.int64,
                                          compressors=compressors, fill_value=0)
            self._tail = np.zeros(1, dtype=np.int64)  # indptr from the first row of the unfinished row block
        else:
            self._rows_per_chunk = self.chunk_rows or default_chunk_rows(self.n_cols, np.dtype(self.dtype).itemsize)
            self.chunk_rows = self._rows_per_chunk
            self._x = self._group.create_array("X", shape=(0, self.n_cols), chunks=(self.chunk_rows, self.n_cols),
                                               dtype=self.dtype, compressors=compressors, fill_value=0)
            self._pending: list[np.ndarray] = []
            self._pending_rows = 0

    # -- appending
    def append(self, block: ArrayLike) -> None:
        """Append a row block of shape (rows, n_cols): numpy or scipy.sparse."""
        if block.ndim != 2 or block.shape[1] != self.n_cols:
            raise ValueError(f"row block at row {self.n_rows} has shape {block.shape}, expected (*, {self.n_cols})")
        if self.validate:
            check_block(block, self.n_rows)
        if self.sparse:
            self._append_sparse(sp.csr_array(block, dtype=self.dtype))
        else:
            dense = block.toarray() if sp.issparse(block) else np.asarray(block)
            self._pending.append(dense.astype(self.dtype, copy=False))
            self._pending_rows += dense.shape[0]
            self.n_rows += dense.shape[0]
            if self._pending_rows >= self._rows_per_chunk:
                self._flush_dense(final=False)

    def _append_sparse(self, csr: sp.csr_array) -> None:
        csr.sum_duplicates()
        csr.sort_indices()
        nnz = csr.nnz
        if nnz:
            start = self._nnz
            self._data.resize((start + nnz,))
            self._indices.resize((start + nnz,))
            self._data[start:] = csr.data
            self._indices[start:] = csr.indices.astype(self._indices.dtype, copy=False)
        ends = csr.indptr[1:].astype(np.int64) + self._nnz
        written = self._indptr.shape[0]
        self._indptr.resize((written + len(ends),))
        self._indptr[written:] = ends
        self._tail = np.concatenate([self._tail, ends])
        self._extend_row_bounds(final=False)
        self._nnz += nnz
        self.n_rows += csr.shape[0]

    def _extend_row_bounds(self, final: bool) -> None:
        """Add the row block boundaries the rows appended so far decide (all of them when ``final``);
        only the unfinished block's indptr stays in memory."""
        ends, used = row_block_ends(self._tail, final)
        self._row_bounds.extend(self._row_bounds[-1] + end for end in ends)
        self._tail = self._tail[used:]

    def _flush_dense(self, final: bool) -> None:
        if not self._pending:
            return
        rows = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        n_full = rows.shape[0] if final else (rows.shape[0] // self._rows_per_chunk) * self._rows_per_chunk
        start = self._x.shape[0]
        self._x.resize((start + n_full, self.n_cols))
        self._x[start:start + n_full] = rows[:n_full]
        rest = rows[n_full:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)

    # -- finishing
    def close(self) -> Matrix:
        """Write labels and metadata, then publish the store under its final name."""
        try:
            check_2d((self.n_rows, self.n_cols), where=str(self.path))
            if self.sparse:
                x = member(self._group, "X", zarr.Group)
                x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                                "shape": [self.n_rows, self.n_cols]})
                self._extend_row_bounds(final=True)
                bounds = tuple(self._row_bounds)
                if self.n_rows + 1 < INDPTR_CHUNK_ELEMENTS:
                    shrink_to_one_chunk(x, "indptr", self.n_rows + 1)
                if self._nnz < SPARSE_CHUNK_ELEMENTS:
                    shrink_to_one_chunk(x, "data", self._nnz)
                    shrink_to_one_chunk(x, "indices", self._nnz)
            else:
                self._flush_dense(final=True)
                if self.n_rows < self._rows_per_chunk:
                    shrink_to_one_chunk(self._group, "X", self.n_rows)
                    self._rows_per_chunk = self.chunk_rows = self.n_rows
                bounds = chunk_bounds(self.n_rows, self._rows_per_chunk)
            write_labels(self._group, "row_labels", self.row_labels, self.n_rows)
            write_labels(self._group, "col_labels", self.col_labels, self.n_cols)
            meta = {"version": FORMAT_VERSION, "kind": "sparse" if self.sparse else "dense",
                    "row_bounds": [int(b) for b in bounds], **self.attrs}
            self._group.attrs.update({"distnmf": meta})
            storage.publish(self._tmp, self.path, self.overwrite)
        except BaseException:
            self.abort()
            raise
        return open_matrix(self.path)

    def abort(self) -> None:
        """Remove the temporary store."""
        storage.remove(self._tmp)

    def __enter__(self) -> MatrixWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.matrix = self.close()
        else:
            self.abort()


def default_chunk_rows(n_cols: int, itemsize: int = 4, target_bytes: int = DENSE_BLOCK_BYTES) -> int:
    """Rows per dense chunk so that one chunk holds about ``target_bytes``."""
    return max(1, target_bytes // max(1, n_cols * itemsize))


def save_matrix(X: ArrayLike, path: str | os.PathLike, row_labels: Iterable[Any] | None = None,
                col_labels: Iterable[Any] | None = None, *, dtype: DTypeLike = np.float32,
                chunk_rows: int | None = None, compression: str | None = None,
                attrs: dict[str, Any] | None = None, overwrite: bool = False) -> Matrix:
    """Validate and write a matrix to a Zarr store; returns the opened :class:`Matrix`.

    Parameters
    ----------
    X : array-like of shape (n_rows, n_cols)
        numpy array, scipy.sparse matrix, dask array (dense or with scipy.sparse chunks),
        zarr array or an opened :class:`Matrix`. Must be finite and non-negative.
    path : path or URL (``s3://bucket/prefix/x.zarr``) of the store to create.
    row_labels, col_labels : optional sequences of length n_rows / n_cols (stored as str).
    chunk_rows : rows per dense chunk; default about 32 MiB per chunk.
    compression : None (default, fastest reads), ``"lz4"`` (Blosc) or ``"zstd"``.
    attrs : extra metadata, e.g. ``{"image_shape": [64, 64]}``.

    Raises ``ValueError`` naming the row and column of the first bad value; no store is left.
    """
    if isinstance(X, Matrix):
        row_labels = X.row_labels if row_labels is None else row_labels
        col_labels = X.col_labels if col_labels is None else col_labels
        attrs = {**X.attrs, **(attrs or {})}
        X = X.dask
    if isinstance(X, zarr.Array):
        X = da.from_zarr(X)
    if not hasattr(X, "shape") or not hasattr(X, "ndim"):
        X = np.asarray(X)
    n_rows, n_cols = check_2d(X.shape)
    is_sparse = sp.issparse(X) or (isinstance(X, da.Array) and sp.issparse(X._meta))
    with MatrixWriter(path, n_cols, sparse=is_sparse, dtype=dtype, chunk_rows=chunk_rows,
                      compression=compression, overwrite=overwrite, row_labels=row_labels,
                      col_labels=col_labels, attrs=attrs or {}) as writer:
        for block in _row_blocks(X, SPARSE_WRITE_ROWS if is_sparse else writer._rows_per_chunk):
            writer.append(block)
    return writer.matrix


def _row_blocks(X: ArrayLike, rows: int, batch: int = 4) -> Iterator[Any]:
    """Yield row blocks of X in order: dask blocks (``batch`` computed at a time), else ``rows`` rows each."""
    if isinstance(X, da.Array):
        blocks = X.rechunk({1: -1}).to_delayed().ravel()
        for i in range(0, len(blocks), batch):
            yield from dask.compute(*blocks[i:i + batch])
        return
    if sp.issparse(X):
        X = sp.csr_array(X)
    for start in range(0, X.shape[0], rows):
        yield X[start:start + rows]
