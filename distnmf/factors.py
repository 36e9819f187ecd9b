"""Stored results of a factorization: W, H, labels and the fit's history, in one Zarr group.

Layout::

    results.zarr/   attrs["distnmf_factors"] = {"version": 1, "params": {...}, "error_history": [...],
    │                                           "n_iter": ..., "reconstruction_err": ..., "image_shape": ...,
    │                                           "source": "path/of/matrix.zarr"}
    ├── W           float32 (n_rows, n_components), row chunks aligned with the source matrix
    ├── H           float32 (n_components, n_cols)
    ├── row_labels  optional str (n_rows,)
    └── col_labels  optional str (n_cols,)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import zarr

from distnmf import storage
from distnmf.storage import Location, atomic_path
from distnmf.store import Matrix, open_matrix
from distnmf.zarrnodes import check_safe, member, read_array, read_labels, write_labels

if TYPE_CHECKING:
    from distnmf.foldin import FoldIn

FACTORS_VERSION = 1
FIT_FOLD_IN_PARAMS = ("beta_loss", "solver", "alpha_W", "l1_ratio", "missing")  # what fold-in reuses of a fit
ATTRS_KEY = "distnmf_factors"


@dataclass(frozen=True)
class Factors:
    """A lazy view of stored factors. ``W`` stays on disk; ``H`` and the labels are small, loaded once."""

    path: Location
    shape: tuple[int, int]
    n_components: int
    attrs: dict[str, Any]

    @property
    def W(self) -> da.Array:
        """W of shape (n_rows, n_components) as a Dask array backed by Zarr."""
        return da.from_zarr(str(self.path), component="W")

    @cached_property
    def H(self) -> np.ndarray:
        """H of shape (n_components, n_cols)."""
        return read_array(member(zarr.open_group(self.path, mode="r"), "H", zarr.Array))

    @cached_property
    def fold_in(self) -> FoldIn:
        """Folds new rows (r, n_cols) in as the fit would (its loss, solver, W regularization and
        missing-value rule), H H^T computed once: ``factors.fold_in(X_new)`` is W_new (r, n_components)."""
        from distnmf.functional import make_fold_in  # the engine's modules, imported when first needed

        params = self.attrs.get("params", {})
        return make_fold_in(self.H, **{name: params[name] for name in FIT_FOLD_IN_PARAMS if name in params}).prepare()

    @property
    def fold_in_ready(self) -> bool:
        """Whether :attr:`fold_in` is prepared (a query can fold rows in without waiting for it)."""
        return "fold_in" in self.__dict__

    def read_W(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of W, shape (stop - start, n_components)."""
        return read_array(member(zarr.open_group(self.path, mode="r"), "W", zarr.Array), start, stop)

    @cached_property
    def row_labels(self) -> np.ndarray | None:
        group = zarr.open_group(self.path, mode="r")
        return read_labels(group, "row_labels") if "row_labels" in group else None

    @cached_property
    def col_labels(self) -> np.ndarray | None:
        group = zarr.open_group(self.path, mode="r")
        return read_labels(group, "col_labels") if "col_labels" in group else None

    @cached_property
    def row_positions(self) -> dict[str, int] | None:
        """Position of each row label (the first, for repeated labels): label lookups in O(1)."""
        return _positions(self.row_labels)

    @cached_property
    def col_positions(self) -> dict[str, int] | None:
        return _positions(self.col_labels)

    @property
    def error_history(self) -> list[float]:
        return list(self.attrs.get("error_history", []))

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        shape = self.attrs.get("image_shape")
        return tuple(shape) if shape else None


def save_factors(path: str | os.PathLike, W: np.ndarray | da.Array, H: np.ndarray, *,
                 row_labels: Sequence[Any] | None = None, col_labels: Sequence[Any] | None = None,
                 attrs: dict[str, Any] | None = None, overwrite: bool = False) -> Factors:
    """Write W (n_rows, k) and H (k, n_cols) atomically; W may be a Dask array (written in parallel)."""
    path = storage.as_location(path)
    H = np.asarray(H, dtype=np.float32)
    if W.ndim != 2 or H.ndim != 2 or W.shape[1] != H.shape[0]:
        raise ValueError(f"W {W.shape} and H {H.shape} do not form a factorization (W.shape[1] != H.shape[0])")
    with atomic_path(path, overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        chunk_rows = W.chunks[0][0] if isinstance(W, da.Array) else min(W.shape[0], 2**16)
        w_arr = group.create_array("W", shape=W.shape, chunks=(max(1, chunk_rows), W.shape[1]),
                                   dtype=np.float32, compressors=None)
        if isinstance(W, da.Array):
            W.astype(np.float32).store(w_arr, lock=False, compute=True)
        else:
            w_arr[:] = np.asarray(W, dtype=np.float32)
        group.create_array("H", shape=H.shape, chunks=H.shape, dtype=np.float32, compressors=None)[:] = H
        write_labels(group, "row_labels", row_labels, W.shape[0])
        write_labels(group, "col_labels", col_labels, H.shape[1])
        group.attrs.update({ATTRS_KEY: {"version": FACTORS_VERSION, **_jsonable(attrs or {})}})
    return open_factors(path)


STORED_PARAMS = ("n_components", "init", "solver", "beta_loss", "tol", "max_iter", "random_state",
                 "alpha_W", "alpha_H", "l1_ratio", "missing")


def factorize(source: Any, out: str | os.PathLike, *, callback: Callable[[int, float, float], object] | None = None,
              row_labels: Sequence[Any] | None = None, col_labels: Sequence[Any] | None = None,
              overwrite: bool = True, **nmf_params: Any) -> Factors:
    """Fit :class:`distnmf.NMF` on ``source`` and write the factors store ``out`` atomically.

    Parameters
    ----------
    source : store path, :class:`Matrix`, or any input :class:`NMF` accepts, of shape (m, n).
    out : path of the factors store to create (see :mod:`distnmf.factors` for its layout).
    callback : callable(iteration, relative_error, elapsed_seconds), passed to NMF; raising
        in it aborts the fit and nothing is written.
    row_labels, col_labels : override the labels stored with the matrix.
    **nmf_params : NMF parameters (``n_components``, ``solver``, ``checkpoint``, ...).

    W is written block by block from where it was computed; it is never gathered here.
    """
    from distnmf.estimator import NMF  # the engine; reading factors does not need it

    out = storage.as_location(out)
    if storage.exists(out) and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    if isinstance(source, (str, os.PathLike)):
        source = open_matrix(source)
    matrix = source if isinstance(source, Matrix) else None
    with atomic_path(out, overwrite=True) as tmp:
        model = NMF(callback=callback, W_store=tmp, **nmf_params)
        model.fit_transform(source)
        writing = time.perf_counter()
        group = zarr.open_group(tmp, mode="r+")
        H = model.components_
        group.create_array("H", shape=H.shape, chunks=H.shape, dtype=np.float32, compressors=None)[:] = H
        m = member(group, "W", zarr.Array).shape[0]
        write_labels(group, "row_labels", row_labels if row_labels is not None else
                      (matrix.row_labels if matrix else None), m)
        write_labels(group, "col_labels", col_labels if col_labels is not None else
                      (matrix.col_labels if matrix else None), H.shape[1])
        params = {name: value for name, value in model.get_params().items() if name in STORED_PARAMS}
        params["n_components"] = model.n_components_
        attrs = {
            "version": FACTORS_VERSION,
            "params": params,
            "error_history": model.error_history_,
            "n_iter": model.n_iter_,
            "reconstruction_err": model.reconstruction_err_,
            "source": str(matrix.path) if matrix else None,
            "image_shape": list(matrix.image_shape) if matrix and matrix.image_shape else None,
            "timings": {**model.timings_,
                        "writing": model.timings_.get("writing", 0.0) + time.perf_counter() - writing},
        }
        group.attrs.update({ATTRS_KEY: _jsonable(attrs)})
    return open_factors(out)


def open_factors(path: str | os.PathLike) -> Factors:
    """Open stored factors; ``FileNotFoundError`` if absent, ``ValueError`` if not a factors store."""
    path = storage.as_location(path)
    if not storage.exists(path):
        raise FileNotFoundError(f"no factors store at {path}")
    group = zarr.open_group(path, mode="r")
    check_safe(group, path)
    if ATTRS_KEY not in group.attrs or "W" not in group or "H" not in group:
        raise ValueError(f"{path} is not a distnmf factors store (missing W, H or '{ATTRS_KEY}' metadata)")
    W, H, attrs = member(group, "W", zarr.Array), member(group, "H", zarr.Array), group.attrs[ATTRS_KEY]
    if W.ndim != 2 or H.ndim != 2 or W.shape[1] != H.shape[0] or not isinstance(attrs, dict):
        raise ValueError(f"{path} is a corrupt factors store: W {W.shape} and H {H.shape} do not form a "
                         f"factorization, or its '{ATTRS_KEY}' metadata is not a mapping")
    return Factors(path, (W.shape[0], H.shape[1]), W.shape[1], attrs)


def _positions(labels: np.ndarray | None) -> dict[str, int] | None:
    if labels is None:
        return None
    positions: dict[str, int] = {}
    for i, label in enumerate(labels.tolist()):
        positions.setdefault(label, i)
    return positions


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value

