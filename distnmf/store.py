"""Zarr-backed matrices: dense row-chunked arrays and CSR groups, with labels.

On-disk layout of a matrix store (a Zarr v3 group)::

    cats.zarr/                 attrs["distnmf"] = {"version": 1, "kind": "dense"|"sparse",
    │                                              "row_bounds": [...], "image_shape": [64, 64]?}
    ├── X                      dense: float32 array (n_rows, n_cols), chunks of whole rows
    │                          sparse: group in AnnData's ``csr_matrix`` encoding:
    │                                  attrs encoding-type/encoding-version/shape,
    │                                  arrays data (float32), indices (int32/int64), indptr (int64)
    ├── row_labels             optional str array (n_rows,)
    └── col_labels             optional str array (n_cols,)

AnnData stores (``X`` plus ``obs/_index`` and ``var/_index``) and bare Zarr arrays open too.
Stores live at local paths or at fsspec URLs (``s3://bucket/prefix/tags.zarr``, see
:mod:`distnmf.storage`). Every write goes to a temporary sibling and is published (renamed, or
copied with its root metadata last on object stores) only when complete.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
import zarr.codecs

from distnmf import storage
from distnmf.rowread import read_dense_rows
from distnmf.storage import Location, atomic_path, publish  # noqa: F401  (atomic_path: re-exported)

FORMAT_VERSION = 1
DENSE_BLOCK_BYTES = 32 * 2**20
SPARSE_BLOCK_NNZ = 4 * 2**20
SPARSE_CHUNK_ELEMENTS = 2**22
INDPTR_CHUNK_ELEMENTS = 2**20
SPARSE_WRITE_ROWS = 2**16  # rows per block when save_matrix streams an in-memory sparse matrix
LABEL_CHUNK = 2**16

ArrayLike = Any  # numpy, scipy.sparse, dask array, zarr array or Matrix


# --------------------------------------------------------------------------- validation


def check_block(block: np.ndarray | sp.spmatrix | sp.sparray, row_offset: int = 0,
                where: str = "X", allow_nan: bool = False) -> None:
    """Raise ``ValueError`` naming the first NaN/inf or negative entry of a row block.

    ``row_offset`` is the global index of the block's first row, so the message names the
    row and column of the whole matrix. ``allow_nan`` accepts NaN (missing entries).
    """
    values = np.asarray(block.data) if sp.issparse(block) else np.asarray(block)
    if (values.size and np.issubdtype(values.dtype, np.number)
            and not np.issubdtype(values.dtype, np.complexfloating)
            and np.isfinite(values.sum(dtype=np.float64)) and values.min() >= 0):
        return  # the common case, without allocating masks of the block's size
    if sp.issparse(block):
        csr = sp.csr_array(block)
        values = csr.data
        bad = (np.isinf(values) if allow_nan else ~np.isfinite(values)) | (values < 0)
        if not bad.any():
            return
        pos = int(np.argmax(bad))
        row = int(np.searchsorted(csr.indptr, pos, side="right") - 1)
        col = int(csr.indices[pos])
        value = values[pos]
    else:
        values = np.asarray(block)
        if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
            raise ValueError(f"{where} must hold real numbers, got dtype {values.dtype}")
        bad = (np.isinf(values) if allow_nan else ~np.isfinite(values)) | (values < 0)
        if not bad.any():
            return
        row, col = (int(i) for i in np.unravel_index(int(np.argmax(bad)), values.shape))
        value = values[row, col]
    kind = "a negative value" if np.isfinite(value) else "a non-finite value"
    hint = ("" if allow_nan or not np.isnan(value)
            else "; if NaN marks missing entries, fit with missing='unobserved'")
    raise ValueError(
        f"{where} has {kind} ({float(value)}) at row {row_offset + row}, column {col} "
        f"(row block starting at row {row_offset}); NMF needs finite, non-negative input{hint}"
    )


def check_2d(shape: Sequence[int], where: str = "X") -> tuple[int, int]:
    """Validate a matrix shape: exactly 2-D and non-empty."""
    if len(shape) != 2:
        raise ValueError(f"{where} must be 2-D (n_samples, n_features), got {len(shape)}-D shape {tuple(shape)}")
    n_rows, n_cols = int(shape[0]), int(shape[1])
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"{where} is empty: shape {(n_rows, n_cols)}; need at least one row and one column")
    return n_rows, n_cols


def check_rank(k: int, shape: Sequence[int], name: str = "n_components") -> int:
    """``k`` when it is a rank a matrix of ``shape`` can have (1 <= k <= min(shape)), else ValueError."""
    n_rows, n_cols = (int(s) for s in shape)
    if not 1 <= k <= min(n_rows, n_cols):
        raise ValueError(f"{name} must be in 1..{min(n_rows, n_cols)} for a {n_rows}x{n_cols} matrix "
                         f"(a rank is at most min(n_rows, n_cols)), got {k}")
    return k


# --------------------------------------------------------------------------- safe stores

SAFE_CODECS = frozenset({"bytes", "transpose", "sharding_indexed", "crc32c", "zstd", "blosc", "gzip", "zlib",
                         "bz2", "lzma", "lz4", "vlen-utf8", "delta", "shuffle", "bitround"})
SAFE_DTYPE_KINDS = frozenset("biufUST")  # bool, integers, floats; strings (labels)


def _codec_names(meta: dict[str, Any]) -> list[str]:
    """Names of every codec an array's metadata declares (Zarr v3 ``codecs``, nested sharding
    codecs included; Zarr v2 ``compressor`` and ``filters``)."""
    names: list[str] = []

    def collect(codecs: Any) -> None:
        for codec in codecs or ():
            if isinstance(codec, dict):
                names.append(str(codec.get("name", codec.get("id"))))
                config = codec.get("configuration") or {}
                collect(config.get("codecs"))
                collect(config.get("index_codecs"))
            else:
                names.append(repr(codec))

    collect(meta.get("codecs"))
    collect([meta["compressor"]] if meta.get("compressor") else None)
    collect(meta.get("filters"))
    return names


def check_safe(node: zarr.Array | zarr.Group, where: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless every array in ``node`` (recursively) has a numeric or string
    dtype and only codecs of :data:`SAFE_CODECS`: no ``pickle``/object codec is ever decoded.

    Reads metadata only (no chunk), so it runs before any data of an untrusted store is read.
    """
    try:
        arrays = [("", node)] if isinstance(node, zarr.Array) else [
            (f"/{name}", member) for name, member in node.members(max_depth=None) if isinstance(member, zarr.Array)]
    except Exception as exc:  # zarr raises many types for metadata it cannot parse
        raise ValueError(f"{where} holds array metadata distnmf cannot read ({type(exc).__name__}: {exc})") from None
    for name, array in arrays:
        meta = array.metadata.to_dict()
        unsafe = sorted(set(_codec_names(meta)) - SAFE_CODECS)
        if unsafe:
            raise ValueError(f"{where}{name} uses the codec(s) {', '.join(unsafe)}, which distnmf does not decode; "
                             f"allowed: {', '.join(sorted(SAFE_CODECS))}")
        if np.dtype(array.dtype).kind not in SAFE_DTYPE_KINDS:
            raise ValueError(f"{where}{name} has dtype {array.dtype}; distnmf reads only numeric arrays "
                             f"(and string labels)")


Node = TypeVar("Node", zarr.Array, zarr.Group)


def member(group: zarr.Group, name: str, kind: type[Node]) -> Node:
    """The member ``name`` of ``group``, checked to be a ``kind`` (``zarr.Array`` or ``zarr.Group``).

    Raises ``KeyError`` when it is absent and ``ValueError`` naming it when it is of the other
    kind (a store written by another tool, or corrupted).
    """
    node = group[name]
    if not isinstance(node, kind):
        found = "group" if isinstance(node, zarr.Group) else "array"
        where = str(group.store_path).removeprefix("file://")
        raise ValueError(f"{where}/{name} is a Zarr {found} where a Zarr {kind.__name__.lower()} "
                         f"was expected; the store is not in distnmf's layout")
    return node


def read_array(array: zarr.Array, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """Elements ``start:stop`` (along the first axis) of ``array`` as a numpy array."""
    return np.asarray(array[start:stop])


def _compressors(compression: str | None) -> Any:
    if compression in (None, "none"):
        return None
    if compression == "lz4":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    if compression == "zstd":
        return zarr.codecs.ZstdCodec(level=3)
    raise ValueError(f"compression must be None, 'lz4' or 'zstd', got {compression!r}")


def _write_labels(group: zarr.Group, name: str, labels: Iterable[Any] | None, expected: int) -> None:
    """Write ``expected`` labels (any iterable, stored as str) a chunk at a time: a label stream
    longer than the matrix's axis is refused as soon as it overflows, never held whole."""
    if labels is None:
        return
    if isinstance(labels, np.ndarray) and labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {labels.shape}")
    arr = group.create_array(name, shape=(expected,), dtype=str, chunks=(max(1, min(expected, LABEL_CHUNK)),))
    count = 0
    values = iter(labels)
    while piece := list(itertools.islice(values, LABEL_CHUNK)):
        if count + len(piece) > expected:
            raise ValueError(f"{name} has more than {expected} entries, but the matrix has {expected} along that axis")
        arr[count:count + len(piece)] = np.asarray([str(v) for v in piece], dtype=str)
        count += len(piece)
    if count != expected:
        raise ValueError(f"{name} has {count} entries, but the matrix has {expected} along that axis")


# --------------------------------------------------------------------------- writer


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
    dtype: Any = np.float32
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
        compressors = _compressors(self.compression)
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
        ends, used = _row_block_ends(self._tail, final)
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
                    _shrink_to_one_chunk(x, "indptr", self.n_rows + 1)
                if self._nnz < SPARSE_CHUNK_ELEMENTS:
                    _shrink_to_one_chunk(x, "data", self._nnz)
                    _shrink_to_one_chunk(x, "indices", self._nnz)
            else:
                self._flush_dense(final=True)
                if self.n_rows < self._rows_per_chunk:
                    _shrink_to_one_chunk(self._group, "X", self.n_rows)
                    self._rows_per_chunk = self.chunk_rows = self.n_rows
                bounds = _chunk_bounds(self.n_rows, self._rows_per_chunk)
            _write_labels(self._group, "row_labels", self.row_labels, self.n_rows)
            _write_labels(self._group, "col_labels", self.col_labels, self.n_cols)
            meta = {"version": FORMAT_VERSION, "kind": "sparse" if self.sparse else "dense",
                    "row_bounds": [int(b) for b in bounds], **self.attrs}
            self._group.attrs.update({"distnmf": meta})
            publish(self._tmp, self.path, self.overwrite)
        except BaseException:
            self.abort()
            raise
        return open_matrix(self.path)

    def abort(self) -> None:
        """Remove the temporary store."""
        storage.remove(self._tmp)

    def __enter__(self) -> MatrixWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.matrix = self.close()
        else:
            self.abort()


def _shrink_to_one_chunk(group: zarr.Group, name: str, length: int) -> None:
    """Rewrite a small array as one chunk of its own size: an uncompressed partial chunk is
    otherwise stored at full chunk size (a tiny matrix would take 16-32 MiB on disk)."""
    old = member(group, name, zarr.Array)
    values = read_array(old)
    chunks = (max(1, length),) + tuple(old.shape[1:])
    new = group.create_array(name, shape=old.shape, chunks=chunks, dtype=old.dtype,
                             compressors=old.compressors or None, fill_value=old.fill_value, overwrite=True)
    if length:
        new[:] = values


def default_chunk_rows(n_cols: int, itemsize: int = 4, target_bytes: int = DENSE_BLOCK_BYTES) -> int:
    """Rows per dense chunk so that one chunk holds about ``target_bytes``."""
    return max(1, target_bytes // max(1, n_cols * itemsize))


def sparse_row_bounds(indptr: np.ndarray, target_nnz: int = SPARSE_BLOCK_NNZ,
                      max_rows: int = 2**16) -> tuple[int, ...]:
    """Row block boundaries of a CSR matrix so each block holds about ``target_nnz`` entries.

    Returns ``(0, b1, ..., n_rows)``; blocks are also capped at ``max_rows`` rows so the
    dense factor block W_i stays small.
    """
    return (0, *_row_block_ends(indptr, True, target_nnz, max_rows)[0])


def _row_block_ends(indptr: np.ndarray, final: bool, target_nnz: int = SPARSE_BLOCK_NNZ,
                    max_rows: int = 2**16) -> tuple[list[int], int]:
    """Ends of the row blocks of :func:`sparse_row_bounds` (relative to the first row of ``indptr``)
    that ``indptr`` decides, and the row where the first undecided block starts. Without
    ``final``, a last block that more rows could still join is left undecided."""
    last = len(indptr) - 1
    ends: list[int] = []
    start = 0
    while start < last:
        by_nnz = int(np.searchsorted(indptr, indptr[start] + target_nnz, side="right")) - 1
        if not final and by_nnz >= last and start + max_rows > last:
            break
        start = min(last, start + max_rows, max(start + 1, by_nnz))
        ends.append(start)
    return ends, start


# --------------------------------------------------------------------------- saving


def save_matrix(X: ArrayLike, path: str | os.PathLike, row_labels: Iterable[Any] | None = None,
                col_labels: Iterable[Any] | None = None, *, dtype: Any = np.float32,
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


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Matrix:
    """A lazy, chunked view of a matrix store.

    Attributes
    ----------
    path : the store's location: a local ``Path`` or a URL string.
    shape : (n_rows, n_cols).
    is_sparse : whether X is stored in CSR layout.
    nnz : number of stored non-zeros (n_rows * n_cols for dense stores).
    row_bounds : row block boundaries ``[0, b1, ..., n_rows]``; block i is rows
        ``row_bounds[i]:row_bounds[i+1]``, aligned with the storage chunks.
    attrs : user metadata such as ``image_shape``.
    component : where the matrix is inside the store: ``"X"``, or ``""`` when the store is a
        bare 2-D Zarr array (written by another tool; no labels).
    """

    path: Location
    shape: tuple[int, int]
    is_sparse: bool
    nnz: int
    dtype: np.dtype
    row_bounds: tuple[int, ...]
    attrs: dict[str, Any]
    component: str = "X"  # the matrix inside the store: "X", or "" for a bare Zarr array

    @property
    def n_blocks(self) -> int:
        return len(self.row_bounds) - 1

    @property
    def density(self) -> float:
        return self.nnz / float(self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of the matrix when loaded (dense values, or CSR data+indices+indptr)."""
        if self.is_sparse:
            return self.nnz * (self.dtype.itemsize + 4) + (self.shape[0] + 1) * 8
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    @property
    def row_labels(self) -> np.ndarray | None:
        return _read_labels(self.path, "row_labels", ("obs", "_index")) if self.component else None

    @property
    def col_labels(self) -> np.ndarray | None:
        return _read_labels(self.path, "col_labels", ("var", "_index")) if self.component else None

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        shape = self.attrs.get("image_shape")
        return tuple(shape) if shape else None

    def read_rows(self, start: int, stop: int) -> np.ndarray | sp.csr_array:
        """Read rows ``start:stop`` (any range) from disk."""
        return read_rows(self.path, self.is_sparse, start, stop, self.shape[1], self.component)

    @property
    def dask(self) -> da.Array:
        """X as a Dask array of row blocks (chunks are ndarrays or ``scipy.sparse.csr_array``)."""
        if not self.is_sparse:
            return da.from_zarr(str(self.path), component=self.component or None,
                                chunks=(self.row_bounds_chunks(), self.shape[1]))
        token = dask.base.tokenize(str(self.path), self.row_bounds, storage.version_token(self.path))
        name = f"read-csr-{token}"
        graph = {(name, i, 0): (read_rows, self.path, True, a, b, self.shape[1])
                 for i, (a, b) in enumerate(zip(self.row_bounds[:-1], self.row_bounds[1:]))}
        meta = sp.csr_array((0, 0), dtype=self.dtype)
        return da.Array(graph, name, chunks=(self.row_bounds_chunks(), (self.shape[1],)), meta=meta)

    def row_bounds_chunks(self) -> tuple[int, ...]:
        return tuple(int(b - a) for a, b in zip(self.row_bounds[:-1], self.row_bounds[1:]))

    def to_memory(self) -> np.ndarray | sp.csr_array:
        """Load the whole matrix (only for data that fits in memory)."""
        return self.read_rows(0, self.shape[0])


def read_rows(path: Location, is_sparse: bool, start: int, stop: int, n_cols: int,
              component: str = "X") -> np.ndarray | sp.csr_array:
    """Read rows ``start:stop`` of the matrix at ``component`` of the store at ``path``."""
    where = f"{path}/{component}" if component else str(path)
    if not is_sparse:
        array = zarr.open_array(path, path=component, mode="r")
        check_safe(array, where)
        return read_dense_rows(array, start, stop)
    x = member(zarr.open_group(path, mode="r"), component, zarr.Group)
    check_safe(x, where)
    indptr = read_array(member(x, "indptr", zarr.Array), start, stop + 1)
    lo, hi = int(indptr[0]), int(indptr[-1])
    data, indices = member(x, "data", zarr.Array), member(x, "indices", zarr.Array)
    return sp.csr_array((read_array(data, lo, hi), read_array(indices, lo, hi), indptr - lo),
                        shape=(stop - start, n_cols))


def _read_labels(path: Location, name: str, anndata_path: tuple[str, str]) -> np.ndarray | None:
    group = zarr.open_group(path, mode="r")
    if name in group:
        return read_labels(group, name)
    frame, index = anndata_path
    if frame in group and index in (table := member(group, frame, zarr.Group)):
        return read_labels(table, index)
    return None


def open_matrix(path: str | os.PathLike) -> Matrix:
    """Open a matrix store (distnmf, AnnData-style or a bare 2-D Zarr array) lazily.

    Raises ``FileNotFoundError`` when nothing is at ``path`` and ``ValueError`` when the
    store is not a readable 2-D matrix.
    """
    path = storage.as_location(path)
    if not storage.exists(path):
        raise FileNotFoundError(f"no matrix store at {path}")
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:  # zarr raises several types for corrupt metadata
        raise ValueError(f"{path} is not a readable Zarr store: {exc}") from exc
    check_safe(node, path)
    if isinstance(node, zarr.Array):
        return _open_bare_array(path, node)
    meta = node.attrs.get("distnmf", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{path} has 'distnmf' metadata that is not a mapping: {meta!r}")
    if "X" not in node:
        raise ValueError(f"{path} is a Zarr group without an 'X' matrix; not a matrix store")
    x = node["X"]
    if isinstance(x, zarr.Array):
        shape = check_2d(x.shape, where=f"{path}/X")
        bounds = _stored_bounds(meta, shape[0], path) or _chunk_bounds(shape[0], x.chunks[0])
        return Matrix(path, shape, False, shape[0] * shape[1], np.dtype(x.dtype), bounds, _user_attrs(meta))
    encoding = x.attrs.get("encoding-type")
    if encoding != "csr_matrix":
        raise ValueError(f"{path}/X has encoding-type {encoding!r}; only dense arrays and 'csr_matrix' are supported")
    try:
        shape = check_2d(_ints(x.attrs["shape"], f"{path}/X shape"), where=f"{path}/X")
        data = member(x, "data", zarr.Array)
        bounds = _stored_bounds(meta, shape[0], path) or sparse_row_bounds(read_array(member(x, "indptr", zarr.Array)))
    except KeyError as exc:
        raise ValueError(f"{path}/X is a corrupt CSR group: missing {exc}") from exc
    return Matrix(path, shape, True, int(data.shape[0]), np.dtype(data.dtype), bounds, _user_attrs(meta))


def _ints(value: object, what: str) -> tuple[int, ...]:
    """``value`` (read from a store's JSON metadata) as a tuple of ints; ValueError naming ``what``."""
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{what} must be a list of integers, got {value!r}")
    return tuple(value)


def _stored_bounds(meta: dict[str, Any], n_rows: int, path: Location) -> tuple[int, ...] | None:
    """The row block bounds recorded in a distnmf store's metadata, checked: 0 = b0 < b1 < ... = n_rows."""
    if not meta.get("row_bounds"):
        return None
    bounds = _ints(meta["row_bounds"], f"{path} metadata row_bounds")
    if bounds[0] != 0 or bounds[-1] != n_rows or any(b >= c for b, c in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"{path} metadata row_bounds must rise from 0 to the {n_rows} rows of X, got {list(bounds)}")
    return bounds


def _open_bare_array(path: Location, arr: zarr.Array, component: str = "") -> Matrix:
    """A dense Matrix over a 2-D Zarr array (row blocks follow its chunks; no labels)."""
    where = f"{path}/{component}" if component else str(path)
    if arr.ndim != 2:
        raise ValueError(f"{where} holds a {arr.ndim}-D array; a matrix must be 2-D")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{where} must hold real numbers, got dtype {arr.dtype}")
    shape = check_2d(arr.shape, where=where)
    return Matrix(path, shape, False, shape[0] * shape[1], np.dtype(arr.dtype),
                  _chunk_bounds(shape[0], arr.chunks[0]), {}, component)


def local_array_matrix(arr: zarr.Array) -> Matrix | None:
    """A Matrix over a Zarr array kept in a local directory (so tasks anywhere on this host can
    read row ranges of it by path), else None."""
    if not isinstance(arr.store, zarr.storage.LocalStore):
        return None
    return _open_bare_array(arr.store.root, arr, arr.path)


def _chunk_bounds(n_rows: int, chunk_rows: int) -> tuple[int, ...]:
    return (*range(0, n_rows, chunk_rows), n_rows)


def _user_attrs(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ("version", "kind", "row_bounds")}


def read_labels(group: zarr.Group, name: str) -> np.ndarray:
    """The label array ``name`` of ``group`` as plain numpy ``str_`` (Zarr returns variable-length
    strings as numpy StringDType)."""
    return np.array(read_array(member(group, name, zarr.Array)).tolist(), dtype=str)
