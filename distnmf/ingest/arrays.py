"""Numeric arrays into a matrix store: ``.npy``, ``.npz`` (scipy.sparse or dense), ``.mtx``, CSV/TSV.

``.npy`` files are memory-mapped and CSV/TSV files are parsed a block of lines at a time, so
both ingest with bounded memory whatever their size. ``.npz`` and Matrix Market files are read
whole (their formats are not row-streamable); convert very large ones to ``.npy`` first.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import scipy.sparse as sp

from distnmf.ingest.report import IngestReport, Stopwatch, progress
from distnmf.store import MatrixWriter, default_chunk_rows

CSV_BLOCK_BYTES = 8 * 2**20
SPARSE_NPZ_KEYS = {"format", "shape", "data"}
TEXT_SUFFIXES = {".csv", ".tsv", ".tab", ".txt", ".dat"}


def ingest_array(src: str | os.PathLike, dest: str | os.PathLike, *, sparse: bool | None = None,
                 key: str | None = None, delimiter: str | None = None, header: bool | None = None,
                 index: bool = False, block_rows: int | None = None, compression: str | None = None,
                 overwrite: bool = False, show_progress: bool | None = None) -> IngestReport:
    """Write the numeric matrix in ``src`` to the store ``dest``.

    Parameters
    ----------
    src : a ``.npy``, ``.npz``, ``.mtx`` or CSV/TSV (``.csv``, ``.tsv``, ``.tab``, ``.txt``,
        ``.dat``) file holding a 2-D non-negative matrix of shape (n_rows, n_cols).
    dest : path of the store to create.
    sparse : store as CSR (True) or dense (False); default: sparse for sparse inputs
        (scipy ``.npz``, coordinate ``.mtx``), dense otherwise.
    key : for a dense ``.npz`` holding several arrays, the one to read.
    delimiter : CSV cell separator; default from the suffix (``,`` for .csv, tab for .tsv/.tab),
        else sniffed from the first line (tab, comma, semicolon, else whitespace).
    header : whether the first line of a CSV names the columns (they become column labels);
        default: detected (a first line with a non-numeric cell is a header).
    index : whether the first CSV column holds row labels.
    block_rows : rows per streamed block; default about 8 MiB of CSV text or one store chunk.
    compression, overwrite : as for :class:`distnmf.store.MatrixWriter`.
    show_progress : progress bar on stderr; default only on a terminal.

    Returns
    -------
    IngestReport

    Raises
    ------
    FileNotFoundError : no file at ``src``.
    ValueError : unknown format, not 2-D, a non-numeric cell, a negative or non-finite value
        (naming the line for CSV, the row and column otherwise). No store is left behind.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no array file at {src}")
    clock = Stopwatch()
    suffix = src.suffix.lower()
    notes: list[str] = []
    if suffix == ".npy":
        matrix = _ingest_npy(src, dest, sparse=bool(sparse), block_rows=block_rows,
                             compression=compression, overwrite=overwrite, show_progress=show_progress)
    elif suffix == ".npz":
        matrix = _ingest_in_memory(_load_npz(src, key), src, dest, sparse, compression, overwrite)
    elif suffix == ".mtx":
        matrix = _ingest_in_memory(scipy.io.mmread(src), src, dest, sparse, compression, overwrite)
    elif suffix in TEXT_SUFFIXES:
        matrix, skipped_blank = _ingest_csv(src, dest, sparse=bool(sparse), delimiter=delimiter,
                                            header=header, index=index, block_rows=block_rows,
                                            compression=compression, overwrite=overwrite,
                                            show_progress=show_progress)
        if skipped_blank:
            notes.append(f"{skipped_blank:,} blank lines were ignored.")
    else:
        raise ValueError(f"{src}: unknown array format {suffix!r}; expected .npy, .npz, .mtx, "
                         f"or CSV/TSV text ({', '.join(sorted(TEXT_SUFFIXES))})")
    return IngestReport("array", src, matrix, notes=notes, seconds=clock.seconds)


# --------------------------------------------------------------------------- binary formats


def _ingest_npy(src: Path, dest: str | os.PathLike, *, sparse: bool, block_rows: int | None,
                compression: str | None, overwrite: bool, show_progress: bool | None):
    try:
        arr = np.load(src, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"{src}: cannot memory-map this .npy file ({exc})") from exc
    _check_numeric_2d(arr, src)
    rows = block_rows or default_chunk_rows(arr.shape[1])
    starts = range(0, arr.shape[0], rows)
    with MatrixWriter(dest, arr.shape[1], sparse=sparse, compression=compression,
                      chunk_rows=max(1, min(default_chunk_rows(arr.shape[1]), arr.shape[0])),
                      overwrite=overwrite, attrs=_source_attrs(src)) as writer:
        for start in progress(starts, total=len(starts), desc=f"ingest {src.name}", unit="block",
                              enabled=show_progress):
            block = np.asarray(arr[start:start + rows], dtype=np.float32)
            writer.append(sp.csr_array(block) if sparse else block)
    return writer.matrix


def _load_npz(src: Path, key: str | None) -> Any:
    with np.load(src, allow_pickle=False) as z:
        names = list(z.files)
        if SPARSE_NPZ_KEYS <= set(names) and key is None:
            return sp.load_npz(src)
        if key is not None:
            if key not in names:
                raise ValueError(f"{src} has no array {key!r}; it holds {names}")
            return z[key]
        if len(names) != 1:
            raise ValueError(f"{src} holds {len(names)} arrays {names}; choose one with key=...")
        return z[names[0]]


def _ingest_in_memory(X: Any, src: Path, dest: str | os.PathLike, sparse: bool | None,
                      compression: str | None, overwrite: bool):
    if sp.issparse(X):
        if X.ndim != 2:
            raise ValueError(f"{src} holds a {X.ndim}-D sparse array; a matrix must be 2-D")
        X = sp.csr_array(X)
    else:
        X = np.asarray(X)
        _check_numeric_2d(X, src)
    store_sparse = sp.issparse(X) if sparse is None else sparse
    rows = 2**16 if store_sparse else max(1, min(default_chunk_rows(X.shape[1]), X.shape[0]))
    with MatrixWriter(dest, X.shape[1], sparse=store_sparse, compression=compression, chunk_rows=rows,
                      overwrite=overwrite, attrs=_source_attrs(src)) as writer:
        for start in range(0, X.shape[0], rows):
            block = X[start:start + rows]
            if store_sparse:
                writer.append(sp.csr_array(block, dtype=np.float32))
            else:
                writer.append(block.toarray() if sp.issparse(block) else block)
    return writer.matrix


def _check_numeric_2d(arr: np.ndarray, src: Path) -> None:
    if arr.ndim != 2:
        raise ValueError(f"{src} holds a {arr.ndim}-D array of shape {arr.shape}; a matrix must be 2-D")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
            or arr.dtype == np.bool_):
        raise ValueError(f"{src} holds dtype {arr.dtype}; expected real numbers")


def _source_attrs(src: Path) -> dict[str, Any]:
    return {"ingest": {"kind": "array", "source": str(src)}}


# --------------------------------------------------------------------------- CSV / TSV


def _ingest_csv(src: Path, dest: str | os.PathLike, *, sparse: bool, delimiter: str | None,
                header: bool | None, index: bool, block_rows: int | None, compression: str | None,
                overwrite: bool, show_progress: bool | None):
    reader = CsvNumberReader(src, delimiter=delimiter, header=header, index=index,
                             block_rows=block_rows)
    total = src.stat().st_size
    bar = progress(reader.blocks(), total=None, desc=f"ingest {src.name}", unit="block",
                   enabled=show_progress)
    row_labels: list[str] = []
    with MatrixWriter(dest, reader.n_cols, sparse=sparse, compression=compression,
                      overwrite=overwrite, col_labels=reader.col_labels,
                      attrs={"ingest": {"kind": "array", "source": str(src), "bytes": total}}) as writer:
        for block, labels in bar:
            writer.append(sp.csr_array(block) if sparse else block)
            row_labels.extend(labels)
        writer.row_labels = row_labels if index else None
    return writer.matrix, reader.blank_lines


class CsvNumberReader:
    """Parse a delimited text file of non-negative numbers in row blocks of bounded size.

    Attributes ``n_cols``, ``col_labels`` (from a header, else None) and ``delimiter`` are
    known after construction; ``blocks()`` yields ``(block, row_labels)`` with ``block`` a
    float32 array of shape (rows, n_cols). Errors name the file, line and column.
    """

    def __init__(self, path: Path, *, delimiter: str | None = None, header: bool | None = None,
                 index: bool = False, block_rows: int | None = None) -> None:
        self.path = path
        self.index = index
        self.blank_lines = 0
        first_no, first = self._first_line()
        self.delimiter = delimiter if delimiter is not None else _guess_delimiter(path, first)
        cells = _split(first, self.delimiter)
        data_cells = cells[1:] if index else cells
        if not data_cells:
            raise ValueError(f"{path}, line {first_no}: no data columns"
                             + (" after the index column" if index else ""))
        is_header = header if header is not None else not all(_is_number(c) for c in data_cells)
        self.n_cols = len(data_cells)
        self.col_labels = [c.strip().strip('"') for c in data_cells] if is_header else None
        self._skip_first = is_header
        width = max(1, len(first))
        self.block_rows = block_rows or max(1, CSV_BLOCK_BYTES // width)

    def _first_line(self) -> tuple[int, str]:
        with open(self.path, encoding="utf-8-sig") as f:
            for no, line in enumerate(f, start=1):
                if line.strip():
                    return no, line.rstrip("\r\n")
        raise ValueError(f"{self.path} has no data: the file is empty or blank")

    def blocks(self) -> Iterator[tuple[np.ndarray, list[str]]]:
        lines: list[str] = []
        numbers: list[int] = []
        skip = self._skip_first
        with open(self.path, encoding="utf-8-sig") as f:
            for no, line in enumerate(f, start=1):
                if not line.strip():
                    self.blank_lines += 1
                    continue
                if skip:
                    skip = False
                    continue
                lines.append(line)
                numbers.append(no)
                if len(lines) >= self.block_rows:
                    yield self._parse(lines, numbers)
                    lines, numbers = [], []
        if lines:
            yield self._parse(lines, numbers)

    def _parse(self, lines: list[str], numbers: list[int]) -> tuple[np.ndarray, list[str]]:
        labels: list[str] = []
        if self.index:
            pairs = [_split_once(line, self.delimiter) for line in lines]
            labels = [p[0].strip().strip('"') for p in pairs]
            lines = [p[1] for p in pairs]
        try:
            block = np.loadtxt(io.StringIO("".join(lines)), delimiter=self.delimiter, dtype=np.float64,
                               ndmin=2, comments=None, quotechar='"')
        except ValueError:
            self._raise_bad_cell(lines, numbers)
            raise
        if block.shape != (len(lines), self.n_cols):
            self._raise_bad_cell(lines, numbers)
            raise ValueError(f"{self.path}, lines {numbers[0]}-{numbers[-1]}: do not parse as a "
                             f"table of {self.n_cols} columns")
        bad = ~np.isfinite(block) | (block < 0)
        if bad.any():
            r, c = (int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
            kind = "negative" if np.isfinite(block[r, c]) else "non-finite"
            raise ValueError(f"{self.path}, line {numbers[r]}, column {c + 1 + self.index}: "
                             f"{kind} value {float(block[r, c])!r}; NMF needs finite, non-negative numbers")
        return block.astype(np.float32), labels

    def _raise_bad_cell(self, lines: list[str], numbers: list[int]) -> None:
        for line, no in zip(lines, numbers):
            cells = _split(line.rstrip("\r\n"), self.delimiter)
            if len(cells) != self.n_cols:
                raise ValueError(f"{self.path}, line {no}: {len(cells) + self.index} columns, "
                                 f"expected {self.n_cols + self.index} (as on the first line)")
            for j, cell in enumerate(cells):
                if not _is_number(cell):
                    raise ValueError(f"{self.path}, line {no}, column {j + 1 + self.index}: "
                                     f"{cell.strip()!r} is not a number")


def _guess_delimiter(path: Path, first_line: str) -> str | None:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    for candidate in ("\t", ",", ";"):
        if candidate in first_line:
            return candidate
    return None


def _split(line: str, delimiter: str | None) -> list[str]:
    return line.split(delimiter) if delimiter is not None else line.split()


def _split_once(line: str, delimiter: str | None) -> tuple[str, str]:
    parts = line.split(delimiter, 1) if delimiter is not None else line.split(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "")


def _is_number(cell: str) -> bool:
    try:
        float(cell.strip().strip('"'))
    except ValueError:
        return False
    return True
