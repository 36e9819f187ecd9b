"""Input validation shared by the library, the CLI and the service: matrix shapes, ranks and
the values of row blocks (finite, non-negative), with messages naming the row and column."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

REAL_KINDS = frozenset("biuf")  # numpy dtype kinds of real numbers: bool, signed and unsigned integers, floats


def check_real_dtype(dtype: np.dtype | type, where: str = "X") -> None:
    """Raise ``ValueError`` unless ``dtype`` holds real numbers (bool, integers or floats)."""
    if np.dtype(dtype).kind not in REAL_KINDS:
        raise ValueError(f"{where} must hold real numbers (bool, integers or floats), got dtype {np.dtype(dtype)}")


def check_block(block: np.ndarray | sp.spmatrix | sp.sparray, row_offset: int = 0,
                where: str = "X", allow_nan: bool = False) -> None:
    """Raise ``ValueError`` naming the first NaN/inf or negative entry of a row block.

    ``row_offset`` is the global index of the block's first row, so the message names the
    row and column of the whole matrix. ``allow_nan`` accepts NaN (missing entries).
    """
    values = np.asarray(block.data) if sp.issparse(block) else np.asarray(block)
    check_real_dtype(values.dtype, where)
    if values.size and np.isfinite(values.sum(dtype=np.float64)) and values.min() >= 0:
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
    """``(n_rows, n_cols)`` of a matrix shape; ``ValueError`` unless it is exactly 2-D and non-empty."""
    if len(shape) != 2:
        raise ValueError(f"{where} holds a {len(shape)}-D array; a matrix must be 2-D (n_samples, n_features), "
                         f"got shape {tuple(shape)}")
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
