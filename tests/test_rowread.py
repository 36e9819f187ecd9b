"""Row ranges of dense Zarr arrays read by streaming chunks equal Zarr's own slicing; stores
chunked coarsely for the workers' memory are read in smaller row blocks."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import distnmf
from distnmf.rowread import _stream_layout, read_dense_rows
from distnmf.source import as_source

RANGES = [(0, 1003), (5, 17), (95, 305), (100, 200), (990, 1003), (1000, 1003), (450, 460)]


@pytest.mark.parametrize("zarr_format,compressors,streamed", [
    (3, "auto", True), (3, None, False), (2, "auto", True), (2, None, False),
    (3, zarr.codecs.BloscCodec(cname="lz4"), None),
])
def test_streamed_rows_equal_zarr_slicing(tmp_path, zarr_format, compressors, streamed):
    X = np.random.default_rng(0).random((1003, 37), dtype=np.float32)
    path = tmp_path / "x.zarr"
    array = zarr.create_array(path, shape=X.shape, chunks=(100, 37), dtype=np.float32, zarr_format=zarr_format,
                              compressors=compressors, fill_value=0.5)
    array[:400] = X[:400]
    array[500:] = X[500:]  # chunk 4 (rows 400-499) is never written: it holds the fill value
    assert _stream_layout(array) is streamed
    for start, stop in RANGES:
        np.testing.assert_array_equal(read_dense_rows(array, start, stop), array[start:stop])


def test_a_truncated_chunk_is_reported(tmp_path):
    path = tmp_path / "x.zarr"
    array = zarr.create_array(path, shape=(200, 8), chunks=(100, 8), dtype=np.float32, compressors=None)
    array[:] = 1.0
    chunk = path / array.metadata.encode_chunk_key((1, 0))
    chunk.write_bytes(chunk.read_bytes()[:1000])
    with pytest.raises(ValueError, match="chunk ends .* bytes early; the store is truncated"):
        read_dense_rows(array, 150, 200)


def test_coarse_chunks_are_split_to_fit_task_memory(tmp_path):
    path = tmp_path / "coarse.zarr"
    zarr.create_array(path, shape=(50_000, 1_000), chunks=(20_000, 1_000), dtype=np.float32)
    matrix = distnmf.open_matrix(path)
    source = as_source(matrix, n_blocks_hint=2, task_memory=40 * 2**20)  # 40 MiB: 5,242 rows of 8,000 B
    sizes = np.diff(source.bounds)
    assert sizes.max() * 1_000 * 8 <= 40 * 2**20
    assert len(set(sizes[:-1])) == 1, "equal blocks, so a W array chunked by block has one writer per chunk"
    assert set(source.bounds) >= {0, 20_000, 40_000, 50_000}, "blocks must not straddle storage chunks"
    unlimited = as_source(matrix, n_blocks_hint=2)
    assert unlimited.bounds == (0, 20_000, 40_000, 50_000)
