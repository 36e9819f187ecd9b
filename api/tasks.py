"""Functions the service runs as Dask tasks; kept light so workers import only the store module."""

from __future__ import annotations

from pathlib import Path

from distnmf.store import read_rows
from distnmf.validation import check_block


def check_rows(path: Path, is_sparse: bool, start: int, stop: int, n_cols: int) -> None:
    """Raise ``ValueError`` naming the first negative or non-finite value of rows ``start:stop``."""
    check_block(read_rows(path, is_sparse, start, stop, n_cols), start)
