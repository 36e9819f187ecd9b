"""Streaming W row ranges and H column ranges as ``.npy`` bytes or JSON, a block at a time."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np

from distnmf.factors import Factors

BLOCK_ELEMENTS = 2**20  # float32 values read and sent per piece
JSON_PIECE_CHARS = 2**20  # JSON text sent per piece


def npy_header(shape: tuple[int, int]) -> bytes:
    """The ``.npy`` header of a C-order float32 array of ``shape``."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _blocks(factors: Factors, factor: str, start: int, stop: int) -> tuple[tuple[int, int], Iterator[np.ndarray]]:
    """Shape of the range and its row blocks: W rows start:stop, or H[:, start:stop] whole (H is small)."""
    k = factors.n_components
    if factor == "H":
        H = factors.H[:, start:stop]
        return (k, stop - start), iter([H])
    step = max(1, BLOCK_ELEMENTS // k)
    return (stop - start, k), (factors.read_W(a, min(stop, a + step)) for a in range(start, stop, step))


def stream_npy(factors: Factors, factor: str, start: int, stop: int) -> Iterator[bytes]:
    """``.npy`` bytes of W[start:stop] (rows) or H[:, start:stop] (columns)."""
    shape, blocks = _blocks(factors, factor, start, stop)
    yield npy_header(shape)
    for block in blocks:
        yield np.ascontiguousarray(block, dtype="<f4").tobytes()


def stream_json(factors: Factors, factor: str, start: int, stop: int) -> Iterator[bytes]:
    """JSON matching ``schemas.FactorRange``, written a row at a time (an H row holds up to
    ``max_range`` values): Python objects never exist for more than one row."""
    shape, blocks = _blocks(factors, factor, start, stop)
    yield (f'{{"factor": "{factor}", "start": {start}, "stop": {stop}, '
           f'"shape": [{shape[0]}, {shape[1]}], "data": [').encode()
    pieces: list[str] = []
    size, separator = 0, ""
    for block in blocks:
        for row in np.asarray(block, dtype=np.float32):
            pieces.append(json.dumps(row.tolist()))
            size += len(pieces[-1])
            if size >= JSON_PIECE_CHARS:
                yield (separator + ", ".join(pieces)).encode()
                pieces, size, separator = [], 0, ", "
    yield (separator + ", ".join(pieces) if pieces else "").encode() + b"]}"
