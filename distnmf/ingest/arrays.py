"""Numeric arrays into a matrix store: ``.npy``, ``.npz`` (scipy.sparse or dense), ``.mtx``, CSV/TSV.

Memory stays bounded whatever a file declares: ``.npy`` files and dense or CSR ``.npz`` members
(compressed or not) are read a row block at a time, CSV/TSV a block of lines at a time, and
sizes declared in headers are checked against :class:`IngestLimits` before anything is
allocated. Matrix Market files and non-CSR sparse ``.npz`` files are read whole (their entries
are not in row order), so their declared size must fit ``limits.memory_bytes``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import scipy.sparse as sp

from distnmf.ingest.delimited import CsvNumberReader
from distnmf.ingest.limits import IngestLimits
from distnmf.ingest.npyfile import BLOCK_BYTES, NpyStream, member_names, open_member
from distnmf.ingest.report import IngestReport, Stopwatch, progress
from distnmf.matrixwriter import MatrixWriter, default_chunk_rows
from distnmf.store import Matrix
from distnmf.validation import check_2d, check_real_dtype

SPARSE_BLOCK_ROWS = 2**16
SPARSE_BLOCK_NNZ = 4 * 2**20
SPARSE_NPZ_KEYS = {"format", "shape", "data"}
TEXT_SUFFIXES = {".csv", ".tsv", ".tab", ".txt", ".dat"}
BROKEN_ARCHIVE = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


def ingest_array(src: str | os.PathLike, dest: str | os.PathLike, *, sparse: bool | None = None,
                 key: str | None = None, delimiter: str | None = None, header: bool | None = None,
                 index: bool = False, block_rows: int | None = None, compression: str | None = None,
                 overwrite: bool = False, show_progress: bool | None = None,
                 limits: IngestLimits | None = None) -> IngestReport:
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
    block_rows : rows per streamed block; default about 8 MiB of CSV text or 32 MiB of values.
    compression, overwrite : as for :class:`distnmf.matrixwriter.MatrixWriter`.
    show_progress : progress bar on stderr; default only on a terminal.
    limits : sizes refused before they are read (default: none a machine could hold).

    Returns
    -------
    IngestReport

    Raises
    ------
    FileNotFoundError : no file at ``src``.
    ValueError : unknown format, not 2-D, a non-numeric cell, a negative or non-finite value
        (naming the line for CSV, the row and column otherwise), a truncated file, or a size
        over ``limits``. No store is left behind.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no array file at {src}")
    clock = Stopwatch()
    suffix = src.suffix.lower()
    notes: list[str] = []
    job = _Job(src, dest, compression, overwrite, show_progress, limits or IngestLimits())
    if suffix == ".npy":
        with open(src, "rb") as stream:
            matrix = _ingest_dense(job, NpyStream.open(stream, str(src)), sparse=bool(sparse), block_rows=block_rows)
    elif suffix == ".npz":
        matrix = _ingest_npz(job, sparse=sparse, key=key, block_rows=block_rows)
    elif suffix == ".mtx":
        matrix = _ingest_mtx(job, sparse=sparse)
    elif suffix in TEXT_SUFFIXES:
        matrix, skipped_blank = _ingest_csv(job, sparse=bool(sparse), delimiter=delimiter, header=header, index=index,
                                            block_rows=block_rows)
        if skipped_blank:
            notes.append(f"{skipped_blank:,} blank lines were ignored.")
    else:
        raise ValueError(f"{src}: unknown array format {suffix!r}; expected .npy, .npz, .mtx, "
                         f"or CSV/TSV text ({', '.join(sorted(TEXT_SUFFIXES))})")
    return IngestReport("array", src, matrix, notes=notes, seconds=clock.seconds)


@dataclass(frozen=True)
class _Job:
    """One ingestion: the file read, the store written and how, and the sizes refused."""

    src: Path
    dest: str | os.PathLike
    compression: str | None
    overwrite: bool
    show_progress: bool | None
    limits: IngestLimits

    def writer(self, n_cols: int, *, sparse: bool, chunk_rows: int | None,
               attrs: dict[str, Any] | None = None, col_labels: Sequence[str] | None = None) -> MatrixWriter:
        """The writer of the store (``attrs`` default: where the data came from)."""
        return MatrixWriter(self.dest, n_cols, sparse=sparse, chunk_rows=chunk_rows, compression=self.compression,
                            overwrite=self.overwrite, col_labels=col_labels,
                            attrs=attrs or {"ingest": {"kind": "array", "source": str(self.src)}})


# --------------------------------------------------------------------------- binary formats


def _ingest_dense(job: _Job, arr: NpyStream, *, sparse: bool, block_rows: int | None) -> Matrix:
    """Stream a dense 2-D ``.npy`` array into a store, one row block in memory at a time."""
    n_rows, n_cols = check_2d(arr.shape, arr.where)
    job.limits.check_shape(n_rows, n_cols, n_rows * n_cols, arr.where)
    block_bytes = block_rows * n_cols * arr.dtype.itemsize if block_rows else BLOCK_BYTES
    n_blocks = -(-n_rows // max(1, block_bytes // max(1, n_cols * arr.dtype.itemsize)))
    with job.writer(n_cols, sparse=sparse, chunk_rows=max(1, min(default_chunk_rows(n_cols), n_rows))) as writer:
        for block in progress(arr.row_blocks(block_bytes), total=n_blocks, desc=f"ingest {job.src.name}",
                              unit="block", enabled=job.show_progress):
            block = block.astype(np.float32, copy=False)
            writer.append(sp.csr_array(block) if sparse else block)
    return writer.matrix


def _ingest_npz(job: _Job, *, sparse: bool | None, key: str | None, block_rows: int | None) -> Matrix:
    src = job.src
    try:
        with zipfile.ZipFile(src) as archive:
            names = member_names(archive)
            if SPARSE_NPZ_KEYS <= set(names) and key is None:
                return _ingest_sparse_npz(job, archive, sparse=sparse)
            if key is not None and key not in names:
                raise ValueError(f"{src} has no array {key!r}; it holds {names[:20]}")
            if key is None and len(names) != 1:
                raise ValueError(f"{src} holds {len(names)} arrays {names[:20]}; choose one with key=...")
            return _ingest_dense(job, open_member(archive, key or names[0], str(src)), sparse=bool(sparse),
                                 block_rows=block_rows)
    except BROKEN_ARCHIVE as exc:
        raise ValueError(f"{src} is not a readable .npz (zip) archive: {exc}") from None


def _ingest_sparse_npz(job: _Job, archive: zipfile.ZipFile, *, sparse: bool | None) -> Matrix:
    """A scipy ``save_npz`` archive: CSR streamed by rows; other layouts read whole within the memory limit."""
    src, limits, where = job.src, job.limits, str(job.src)
    layout = open_member(archive, "format", where, allow_text=True).read_all().item()
    layout = layout.decode("ascii", "replace") if isinstance(layout, bytes) else str(layout)
    shape = open_member(archive, "shape", where).read_all()
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise ValueError(f"{where}: 'shape' must hold two non-negative integers, got {shape.tolist()}")
    n_rows, n_cols = (int(v) for v in shape)
    if layout != "csr":
        members = [open_member(archive, name, where) for name in member_names(archive)
                   if name not in ("format", "shape")]
        n_values = max((m.size for m in members), default=0)
        limits.check_shape(n_rows, n_cols, n_values, where)
        limits.check_memory(3 * sum(m.size * m.dtype.itemsize for m in members) + 16 * (n_rows + 1), where,
                            advice="save it in CSR layout (scipy.sparse.save_npz(path, X.tocsr())) to stream it")
        return _ingest_in_memory(job, sp.load_npz(src), sparse)
    indptr, indices, data = (open_member(archive, name, where) for name in ("indptr", "indices", "data"))
    nnz = data.size
    if indptr.shape != (n_rows + 1,) or indices.shape != (nnz,) or len(data.shape) != 1:
        raise ValueError(f"{where}: CSR arrays of inconsistent sizes (indptr {indptr.shape}, indices "
                         f"{indices.shape}, data {data.shape}) for shape ({n_rows}, {n_cols})")
    if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
        raise ValueError(f"{where}: indptr and indices must be integers")
    store_sparse = True if sparse is None else sparse
    limits.check_shape(n_rows, n_cols, nnz if store_sparse else n_rows * n_cols, where)
    max_rows = SPARSE_BLOCK_ROWS if store_sparse else max(1, BLOCK_BYTES // (4 * max(1, n_cols)))
    with job.writer(n_cols, sparse=store_sparse, chunk_rows=_chunk_rows(store_sparse, n_rows, n_cols)) as writer:
        for block in _csr_blocks(indptr, indices, data, n_rows, n_cols, max_rows, where):
            writer.append(block if store_sparse else block.toarray())
    return writer.matrix


def _csr_blocks(indptr: NpyStream, indices: NpyStream, data: NpyStream, n_rows: int, n_cols: int,
                max_rows: int, where: str) -> Iterator[sp.csr_array]:
    """Row blocks of a streamed CSR matrix: at most ``max_rows`` rows and, beyond one row,
    about ``SPARSE_BLOCK_NNZ`` entries each; indptr and indices are checked as they arrive."""
    previous = int(indptr.read(1)[0])
    if previous != 0:
        raise ValueError(f"{where}: indptr must start at 0, got {previous}")
    for start in range(0, n_rows, max_rows):
        ptr = np.concatenate(([previous], indptr.read(min(max_rows, n_rows - start)).astype(np.int64)))
        if (np.diff(ptr) < 0).any() or ptr[-1] > data.size:
            raise ValueError(f"{where}: indptr decreases or exceeds the {data.size:,} entries near row {start:,}")
        a = 0
        while a < len(ptr) - 1:
            b = max(a + 1, int(np.searchsorted(ptr, ptr[a] + SPARSE_BLOCK_NNZ, side="right")) - 1)
            count = int(ptr[b] - ptr[a])
            cols = indices.read(count)
            if count and (cols.min() < 0 or cols.max() >= n_cols):
                raise ValueError(f"{where}: a column index outside 0..{n_cols - 1} in rows "
                                 f"{start + a:,}-{start + b - 1:,}")
            values = data.read(count).astype(np.float32)
            yield sp.csr_array((values, cols.astype(np.int64), ptr[a:b + 1] - ptr[a]), shape=(b - a, n_cols))
            a = b
        previous = int(ptr[-1])
    if previous != data.size:
        raise ValueError(f"{where}: indptr ends at {previous:,} but the matrix holds {data.size:,} entries")


def _ingest_mtx(job: _Job, *, sparse: bool | None) -> Matrix:
    """Matrix Market: the header's sizes are checked against ``limits`` before the entries are read."""
    src, limits = job.src, job.limits
    n_rows, n_cols, entries, layout, field, symmetry = _mtx_header(src, limits)
    if field == "complex":
        raise ValueError(f"{src} holds complex numbers; NMF needs real ones")
    coordinate = layout == "coordinate"
    n_values = entries * (1 if symmetry == "general" else 2) if coordinate else n_rows * n_cols
    limits.check_shape(n_rows, n_cols, n_values, str(src))
    limits.check_memory(48 * n_values if coordinate else 16 * n_values, str(src),
                        advice="convert it to a CSR .npz (scipy.sparse.save_npz) or a .npy file, which stream")
    return _ingest_in_memory(job, scipy.io.mmread(src, spmatrix=False), sparse)


def _mtx_header(src: Path, limits: IngestLimits) -> tuple[int, int, int, str, str, str]:
    """(rows, cols, entries, layout, field, symmetry) from the banner and size line, read with bounded lines."""
    with open(src, encoding="ascii", errors="replace") as stream:
        lines = limits.lines(stream, str(src))
        banner = next(lines, (1, ""))[1].split()
        if len(banner) != 5 or banner[0].lower() != "%%matrixmarket" or banner[1].lower() != "matrix":
            raise ValueError(f"{src}, line 1: not a Matrix Market banner ('%%MatrixMarket matrix <layout> <field> "
                             f"<symmetry>')")
        layout, field, symmetry = (word.lower() for word in banner[2:])
        for no, line in lines:
            if line.startswith("%") or not line.strip():
                continue
            sizes = line.split()
            want = 3 if layout == "coordinate" else 2
            if len(sizes) != want or not all(v.isdigit() for v in sizes):
                raise ValueError(f"{src}, line {no}: expected {want} sizes, got {line.strip()[:80]!r}")
            n_rows, n_cols = int(sizes[0]), int(sizes[1])
            return n_rows, n_cols, int(sizes[2]) if want == 3 else n_rows * n_cols, layout, field, symmetry
    raise ValueError(f"{src} has no size line")


def _ingest_in_memory(job: _Job, X: Any, sparse: bool | None) -> Matrix:
    """Write a matrix read whole; sparse ones in row blocks built from their entries sorted by row,
    so no indptr is ever formed for the whole matrix."""
    src = job.src
    X = sp.coo_array(X) if sp.issparse(X) else np.asarray(X)
    n_rows, n_cols = check_2d(X.shape, str(src))
    check_real_dtype(X.dtype, str(src))
    store_sparse = sp.issparse(X) if sparse is None else sparse
    job.limits.check_shape(n_rows, n_cols, X.nnz if sp.issparse(X) and store_sparse else n_rows * n_cols, str(src))
    rows = SPARSE_BLOCK_ROWS if store_sparse else max(1, min(default_chunk_rows(n_cols), n_rows))
    with job.writer(n_cols, sparse=store_sparse, chunk_rows=_chunk_rows(store_sparse, n_rows, n_cols)) as writer:
        for block in (_coo_row_blocks(X, rows) if sp.issparse(X) else (X[a:a + rows] for a in range(0, n_rows, rows))):
            if store_sparse:
                writer.append(sp.csr_array(block, dtype=np.float32))
            else:
                writer.append(block.toarray() if sp.issparse(block) else block)
    return writer.matrix


def _coo_row_blocks(X: sp.coo_array, rows: int) -> Iterator[sp.csr_array]:
    order = np.argsort(X.row, kind="stable")
    r, c, v = X.row[order], X.col[order], X.data[order]
    n_rows, n_cols = X.shape
    for start in range(0, n_rows, rows):
        stop = min(n_rows, start + rows)
        a, b = np.searchsorted(r, [start, stop])
        yield sp.csr_array((v[a:b], (r[a:b] - start, c[a:b])), shape=(stop - start, n_cols))


def _chunk_rows(store_sparse: bool, n_rows: int, n_cols: int) -> int | None:
    return None if store_sparse else max(1, min(default_chunk_rows(n_cols), n_rows))


# --------------------------------------------------------------------------- CSV / TSV


def _ingest_csv(job: _Job, *, sparse: bool, delimiter: str | None, header: bool | None, index: bool,
                block_rows: int | None) -> tuple[Matrix, int]:
    src = job.src
    reader = CsvNumberReader(src, delimiter=delimiter, header=header, index=index,
                             block_rows=block_rows, limits=job.limits)
    total = src.stat().st_size
    bar = progress(reader.blocks(), total=None, desc=f"ingest {src.name}", unit="block",
                   enabled=job.show_progress)
    row_labels: list[str] = []
    with job.writer(reader.n_cols, sparse=sparse, chunk_rows=None, col_labels=reader.col_labels,
                    attrs={"ingest": {"kind": "array", "source": str(src), "bytes": total}}) as writer:
        for block, labels in bar:
            writer.append(sp.csr_array(block) if sparse else block)
            row_labels.extend(labels)
        writer.row_labels = row_labels if index else None
    return writer.matrix, reader.blank_lines
