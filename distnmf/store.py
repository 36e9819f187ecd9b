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
:mod:`distnmf.storage`). This module opens and reads them; :mod:`distnmf.matrixwriter` writes
them (to a temporary sibling, published only when complete).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
import zarr.storage

from distnmf import storage
from distnmf.rowread import read_dense_rows
from distnmf.storage import Location
from distnmf.validation import check_2d, check_real_dtype
from distnmf.zarrnodes import check_safe, member, read_array, read_labels

SPARSE_BLOCK_NNZ = 4 * 2**20


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
        return da.map_blocks(_read_csr_block, self.path, self.shape[1], name=f"read-csr-{token}",
                             chunks=(self.row_bounds_chunks(), (self.shape[1],)), dtype=self.dtype,
                             meta=sp.csr_array((0, 0), dtype=self.dtype))

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


def _read_csr_block(path: Location, n_cols: int, block_info: dict[Any, Any]) -> sp.csr_array:
    """The row block of a CSR store that ``map_blocks`` asks for (its rows: ``array-location``)."""
    start, stop = block_info[None]["array-location"][0]
    return sp.csr_array(read_rows(path, True, start, stop, n_cols))


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
        bounds = _stored_bounds(meta, shape[0], path) or chunk_bounds(shape[0], x.chunks[0])
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
    shape = check_2d(arr.shape, where=where)
    check_real_dtype(arr.dtype, where)
    return Matrix(path, shape, False, shape[0] * shape[1], np.dtype(arr.dtype),
                  chunk_bounds(shape[0], arr.chunks[0]), {}, component)


def local_array_matrix(arr: zarr.Array) -> Matrix | None:
    """A Matrix over a Zarr array kept in a local directory (so tasks anywhere on this host can
    read row ranges of it by path), else None."""
    if not isinstance(arr.store, zarr.storage.LocalStore):
        return None
    return _open_bare_array(arr.store.root, arr, arr.path)


def chunk_bounds(n_rows: int, chunk_rows: int) -> tuple[int, ...]:
    """Row block boundaries ``(0, chunk_rows, 2 * chunk_rows, ..., n_rows)`` of equal chunks."""
    return (*range(0, n_rows, chunk_rows), n_rows)


def _user_attrs(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ("version", "kind", "row_bounds")}


def sparse_row_bounds(indptr: np.ndarray, target_nnz: int = SPARSE_BLOCK_NNZ,
                      max_rows: int = 2**16) -> tuple[int, ...]:
    """Row block boundaries of a CSR matrix so each block holds about ``target_nnz`` entries.

    Returns ``(0, b1, ..., n_rows)``; blocks are also capped at ``max_rows`` rows so the
    dense factor block W_i stays small.
    """
    return (0, *row_block_ends(indptr, True, target_nnz, max_rows)[0])


def row_block_ends(indptr: np.ndarray, final: bool, target_nnz: int = SPARSE_BLOCK_NNZ,
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
