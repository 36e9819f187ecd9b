"""Row ranges of a dense local Zarr array, read without holding a whole chunk in memory.

Zarr decodes whole chunks: 5,000 rows of a zstd chunk of 20,000 x 1,000 float32 cost the
compressed chunk, the 80 MB decoded chunk and the slice at once (measured: +160 MiB of peak
memory for a 19 MiB slice). When a chunk spans all columns and is stored raw or as one zstd
frame (the defaults of Zarr v2 and v3), the rows of a chunk are one contiguous byte range of
its decoded stream, so this reads the chunk file as a stream, decodes it piece by piece,
skips the rows before the range and decodes the range straight into the result. Peak memory
is the slice plus a few MiB of stream buffers. Any other layout is sliced by Zarr.
"""

from __future__ import annotations

import sys

import numpy as np
import zarr
import zarr.codecs
import zarr.storage
import zstandard

from distnmf.streams import Readable, fill

_NATIVE = "little" if sys.byteorder == "little" else "big"


def read_dense_rows(arr: zarr.Array, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the 2-D array ``arr``."""
    if not isinstance(arr.store, zarr.storage.LocalStore) or (compressed := _stream_layout(arr)) is None:
        return np.asarray(arr[start:stop])
    root = arr.store.root
    n_cols, chunk_rows = arr.shape[1], arr.chunks[0]
    out = np.empty((stop - start, n_cols), dtype=arr.dtype)
    row_bytes = n_cols * out.itemsize
    for chunk in range(start // chunk_rows, (stop - 1) // chunk_rows + 1):
        first = chunk * chunk_rows
        a, b = max(start, first), min(stop, first + chunk_rows)
        target = out[a - start:b - start]
        path = root / arr.path / arr.metadata.encode_chunk_key((chunk, 0))
        if not path.exists():  # chunks never written hold the fill value
            target[...] = arr.metadata.fill_value or 0
            continue
        with open(path, "rb") as raw:
            stream: Readable = zstandard.ZstdDecompressor().stream_reader(raw) if compressed else raw
            stream.seek((a - first) * row_bytes)  # zstd streams decode and discard up to there
            missing = target.nbytes - fill(stream, target.reshape(-1).data.cast("B"))
            if missing:
                raise ValueError(f"{path}: chunk ends {missing} bytes early; the store is truncated")
    return out


def _stream_layout(arr: zarr.Array) -> bool | None:
    """True (one zstd frame) or False (raw bytes) when the chunk files of ``arr`` (a local array) can
    be streamed by row, None when Zarr must decode them."""
    meta = arr.metadata
    if arr.ndim != 2 or arr.chunks[1] != arr.shape[1]:
        return None
    if meta.zarr_format == 2:
        if meta.order != "C" or meta.filters or np.dtype(meta.dtype.to_native_dtype()).byteorder not in "=|<" \
                or _NATIVE != "little":
            return None
        codec = meta.compressor
        if codec is None:
            return False
        return True if type(codec).__name__ == "Zstd" else None
    serializer, *compressors = meta.codecs
    if not isinstance(serializer, zarr.codecs.BytesCodec) or (serializer.endian is not None
                                                              and serializer.endian.value != _NATIVE):
        return None
    if not compressors:
        return False
    if len(compressors) == 1 and isinstance(compressors[0], zarr.codecs.ZstdCodec) and not compressors[0].checksum:
        return True
    return None

