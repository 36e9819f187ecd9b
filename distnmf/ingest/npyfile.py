"""``.npy`` data read from a stream a row block at a time: plain files and (compressed) ``.npz`` members.

Only the header is trusted to say what follows, and it is checked before anything is
allocated: real numeric dtypes only (never pickled objects), C order, and sizes within
:class:`~distnmf.ingest.limits.IngestLimits`. Reads never take more than one block of memory,
whatever the zip directory or the header declares; a stream that ends early is an error.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from distnmf.streams import Readable, fill
from distnmf.validation import REAL_KINDS

HEADER_BYTES = 10_000
BLOCK_BYTES = 32 * 2**20


@dataclass
class NpyStream:
    """An opened ``.npy`` stream positioned at its data.

    Attributes
    ----------
    stream : binary file object after the header.
    shape : the declared shape.
    dtype : the declared dtype (numeric, or a short string for scipy's ``format`` member).
    where : names the stream in messages.
    """

    stream: Readable
    shape: tuple[int, ...]
    dtype: np.dtype
    where: str

    @classmethod
    def open(cls, stream: Readable, where: str, *, allow_text: bool = False) -> NpyStream:
        """Read and check the header of ``stream``; ``allow_text`` admits short strings."""
        try:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream, max_header_size=HEADER_BYTES)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream, max_header_size=HEADER_BYTES)
            else:
                raise ValueError(f"format version {version} is not supported (1.0 and 2.0 are)")
        except ValueError as exc:
            raise ValueError(f"{where} is not a readable .npy array: {exc}") from None
        ok = dtype.kind in REAL_KINDS or (allow_text and dtype.kind in "US" and dtype.itemsize <= 256)
        if not ok or dtype.fields is not None or dtype.subdtype is not None:
            raise ValueError(f"{where} holds dtype {dtype}; expected real numbers")
        if fortran and len(shape) > 1:
            raise ValueError(f"{where} is stored in Fortran (column) order, which cannot be read by rows; save "
                             f"it with np.save(path, np.ascontiguousarray(X))")
        return cls(stream, tuple(int(s) for s in shape), dtype, where)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def read(self, count: int) -> np.ndarray:
        """The next ``count`` elements (flat)."""
        data = bytearray(count * self.dtype.itemsize)
        got = fill(self.stream, memoryview(data))
        if got < len(data):
            raise ValueError(f"{self.where} ends after {got // self.dtype.itemsize:,} of the elements its header "
                             f"declares; the file is truncated or corrupt")
        return np.frombuffer(data, dtype=self.dtype)

    def read_all(self) -> np.ndarray:
        """The whole array (for small members: a sparse matrix's ``shape`` or ``format``)."""
        return self.read(self.size).reshape(self.shape)

    def row_blocks(self, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
        """Row blocks of a 2-D array, each of about ``block_bytes``."""
        n_rows, n_cols = self.shape
        rows = max(1, block_bytes // max(1, n_cols * self.dtype.itemsize))
        for start in range(0, n_rows, rows):
            count = min(rows, n_rows - start)
            yield self.read(count * n_cols).reshape(count, n_cols)


def open_member(archive: zipfile.ZipFile, name: str, where: str, *, allow_text: bool = False) -> NpyStream:
    """The ``.npy`` member ``name`` (with or without the suffix) of an ``.npz`` archive, streaming."""
    member = name if name.endswith(".npy") else f"{name}.npy"
    try:
        stream = archive.open(member)
    except KeyError:
        raise ValueError(f"{where} has no array {name!r}") from None
    assert isinstance(stream, zipfile.ZipExtFile)  # what ZipFile.open returns for reading (typed as IO[bytes])
    return NpyStream.open(stream, f"{where} (array {name!r})", allow_text=allow_text)


def member_names(archive: zipfile.ZipFile) -> list[str]:
    """Array names of an ``.npz`` archive (member names without ``.npy``)."""
    return [n[:-4] if n.endswith(".npy") else n for n in archive.namelist()]
