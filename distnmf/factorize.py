"""One call from a matrix to a stored factorization: the unit of work of the CLI and the service."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from distnmf.estimator import NMF
from distnmf.factors import ATTRS_KEY, FACTORS_VERSION, Factors, _jsonable, open_factors
from distnmf.store import Matrix, _write_labels, atomic_path, open_matrix

STORED_PARAMS = ("n_components", "init", "solver", "beta_loss", "tol", "max_iter", "random_state",
                 "alpha_W", "alpha_H", "l1_ratio", "missing")


def factorize(source: Any, out: str | os.PathLike, *, callback: Any = None,
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
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
    if isinstance(source, (str, os.PathLike)):
        source = open_matrix(source)
    matrix = source if isinstance(source, Matrix) else None
    with atomic_path(out, overwrite=True) as tmp:
        model = NMF(callback=callback, W_store=tmp, **nmf_params)
        model.fit_transform(source)
        group = zarr.open_group(tmp, mode="r+")
        H = model.components_
        group.create_array("H", shape=H.shape, chunks=H.shape, dtype=np.float32, compressors=None)[:] = H
        m = group["W"].shape[0]
        _write_labels(group, "row_labels", row_labels if row_labels is not None else
                      (matrix.row_labels if matrix else None), m)
        _write_labels(group, "col_labels", col_labels if col_labels is not None else
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
        }
        group.attrs.update({ATTRS_KEY: _jsonable(attrs)})
    return open_factors(out)
