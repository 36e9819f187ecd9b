"""Zarr matrix stores: round trips, labels, validation that names the bad entry, atomic writes."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import distnmf
from distnmf.matrixwriter import MatrixWriter


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_dense_round_trip_with_labels(tmp_path):
    X = np.random.default_rng(0).random((1000, 30)).astype(np.float32)
    rows = [f"img{i}" for i in range(1000)]
    m = distnmf.save_matrix(X, tmp_path / "d.zarr", row_labels=rows, chunk_rows=300)
    assert (m.shape, m.nnz, m.is_sparse) == ((1000, 30), 30000, False)
    assert m.row_bounds == (0, 300, 600, 900, 1000)
    assert m.dask.chunks[0] == (300, 300, 300, 100)
    np.testing.assert_array_equal(m.dask.compute(), X)
    assert list(m.row_labels[:2]) == ["img0", "img1"] and m.col_labels is None
    assert zarr.open_group(tmp_path / "d.zarr")["X"].compressors == ()  # uncompressed by default


def test_sparse_round_trip_is_anndata_csr(tmp_path):
    S = sp.random(5000, 200, density=0.05, format="csr", random_state=0, dtype=np.float32)
    tags = [f"tag{j}" for j in range(200)]
    m = distnmf.save_matrix(S, tmp_path / "s.zarr", col_labels=tags)
    assert m.is_sparse and m.nnz == S.nnz and m.density == pytest.approx(0.05)
    assert (m.to_memory() != S).nnz == 0
    x = zarr.open_group(tmp_path / "s.zarr")["X"]
    assert x.attrs["encoding-type"] == "csr_matrix" and list(x.attrs["shape"]) == [5000, 200]
    block = m.dask.blocks[0].compute()
    assert sp.issparse(block)
    assert list(m.col_labels[:2]) == ["tag0", "tag1"]


def test_anndata_layout_opens(tmp_path):
    """An AnnData-style store (X as csr_matrix, labels in obs/_index and var/_index) opens."""
    S = sp.random(50, 8, density=0.3, format="csr", random_state=1, dtype=np.float32)
    root = zarr.open_group(tmp_path / "ad.zarr", mode="w")
    x = root.create_group("X")
    x.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": [50, 8]})
    for name in ("data", "indices", "indptr"):
        arr = getattr(S, name)
        x.create_array(name, shape=arr.shape, dtype=arr.dtype)[:] = arr
    for frame, n in (("obs", 50), ("var", 8)):
        g = root.create_group(frame)
        g.create_array("_index", shape=(n,), dtype=str)[:] = np.array([f"{frame}{i}" for i in range(n)])
    m = distnmf.open_matrix(tmp_path / "ad.zarr")
    assert (m.to_memory() != S).nnz == 0
    assert m.row_labels[3] == "obs3" and m.col_labels[7] == "var7"


@pytest.mark.parametrize("sparse_chunks", [False, True])
def test_dask_input(tmp_path, sparse_chunks):
    X = np.random.default_rng(2).random((500, 40)).astype(np.float32)
    X[X < 0.7] = 0
    arr = da.from_array(X, chunks=(128, 15))
    if sparse_chunks:
        arr = arr.map_blocks(sp.csr_matrix, meta=sp.csr_matrix((0, 0), dtype=np.float32))
    m = distnmf.save_matrix(arr, tmp_path / "x.zarr")
    assert m.is_sparse == sparse_chunks
    got = m.to_memory()
    np.testing.assert_array_equal(got.toarray() if sparse_chunks else got, X)


@pytest.mark.parametrize("bad,expected", [(-0.5, "negative value (-0.5) at row 777, column 5"),
                                          (np.nan, "non-finite value (nan) at row 777, column 5"),
                                          (np.inf, "non-finite value (inf) at row 777, column 5")])
@pytest.mark.parametrize("kind", ["dense", "sparse", "dask"])
def test_bad_values_are_named_and_nothing_is_left(tmp_path, bad, expected, kind):
    X = np.ones((1000, 10), dtype=np.float32)
    X[777, 5] = bad
    data = {"dense": X, "sparse": sp.csr_array(X), "dask": da.from_array(X, chunks=(100, 10))}[kind]
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        distnmf.save_matrix(data, tmp_path / "bad.zarr", chunk_rows=100)
    assert not (tmp_path / "bad.zarr").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (0, 5), (5, 0)])
def test_bad_shapes(tmp_path, shape):
    with pytest.raises(ValueError, match="2-D|empty"):
        distnmf.save_matrix(np.ones(shape), tmp_path / "x.zarr")



@pytest.mark.parametrize("kind", ["dense", "sparse", "dask"])
def test_real_dtypes_only_bool_included(tmp_path, kind):
    """Every input path agrees on what a real number is: bool (0/1 occurrences), integers and
    floats are stored as float32; complex numbers are refused before anything is written."""
    make = {"dense": np.asarray, "sparse": sp.csr_array, "dask": lambda a: da.from_array(a, chunks=(2, 3))}[kind]
    occurrences = np.eye(4, 3, dtype=bool)
    stored = distnmf.save_matrix(make(occurrences), tmp_path / "bool.zarr").to_memory()
    np.testing.assert_array_equal(stored.toarray() if sp.issparse(stored) else stored, occurrences.astype(np.float32))
    with pytest.raises(ValueError, match="must hold real numbers .* got dtype complex128"):
        distnmf.save_matrix(make(occurrences.astype(complex)), tmp_path / "complex.zarr")
    assert not (tmp_path / "complex.zarr").exists()


def test_label_length_mismatch_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="row_labels has 3 entries"):
        distnmf.save_matrix(np.ones((4, 2)), tmp_path / "x.zarr", row_labels=["a", "b", "c"])
    assert list(tmp_path.iterdir()) == []


def test_writer_aborts_on_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with MatrixWriter(tmp_path / "w.zarr", n_cols=3) as w:
            w.append(np.ones((2, 3)))
            raise RuntimeError("producer failed")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_explicit_and_atomic(tmp_path):
    distnmf.save_matrix(np.ones((3, 2)), tmp_path / "x.zarr")
    with pytest.raises(FileExistsError):
        distnmf.save_matrix(np.ones((3, 2)), tmp_path / "x.zarr")
    m = distnmf.save_matrix(2 * np.ones((5, 2)), tmp_path / "x.zarr", overwrite=True)
    assert m.shape == (5, 2) and leftovers(tmp_path) == []


def test_compression_choice(tmp_path):
    m = distnmf.save_matrix(np.ones((10, 4)), tmp_path / "x.zarr", compression="lz4")
    assert len(zarr.open_group(m.path)["X"].compressors) == 1
    with pytest.raises(ValueError, match="compression"):
        distnmf.save_matrix(np.ones((10, 4)), tmp_path / "y.zarr", compression="brotli")


def test_missing_and_corrupt_stores(tmp_path):
    with pytest.raises(FileNotFoundError, match="no matrix store"):
        distnmf.open_matrix(tmp_path / "nope.zarr")
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable Zarr store"):
        distnmf.open_matrix(tmp_path / "junk.zarr")
    zarr.open_group(tmp_path / "empty.zarr", mode="w")
    with pytest.raises(ValueError, match="without an 'X'"):
        distnmf.open_matrix(tmp_path / "empty.zarr")



def test_stores_off_layout_are_refused_by_name(tmp_path):
    """Metadata and members that do not match the layout: a clear ValueError, not a later crash."""
    sparse = distnmf.save_matrix(sp.random(40, 6, density=0.3, format="csr", random_state=0), tmp_path / "s.zarr")
    group = zarr.open_group(sparse.path, mode="r+")
    group.attrs["distnmf"] = {**group.attrs["distnmf"], "row_bounds": [0, 10, 99]}
    with pytest.raises(ValueError, match="row_bounds must rise from 0 to the 40 rows"):
        distnmf.open_matrix(sparse.path)
    group.attrs["distnmf"] = {"row_bounds": "0,40"}
    with pytest.raises(ValueError, match="row_bounds must be a list of integers"):
        distnmf.open_matrix(sparse.path)
    del group.attrs["distnmf"]
    del group["X/indptr"]
    group["X"].create_group("indptr")
    with pytest.raises(ValueError, match="s.zarr/X/indptr is a Zarr group where a Zarr array was expected"):
        distnmf.open_matrix(sparse.path)
    factors = distnmf.save_factors(tmp_path / "f.zarr", np.ones((5, 2)), np.ones((2, 3)))
    zarr.open_group(factors.path, mode="r+").create_array("H", shape=(3, 3), dtype="f4", overwrite=True)
    with pytest.raises(ValueError, match=r"corrupt factors store: W \(5, 2\) and H \(3, 3\)"):
        distnmf.open_factors(factors.path)


def test_factors_store_round_trip(tmp_path):
    W, H = np.random.rand(20, 3), np.random.rand(3, 7)
    f = distnmf.save_factors(tmp_path / "f.zarr", da.from_array(W, chunks=(8, 3)), H,
                             col_labels=list("abcdefg"), attrs={"error_history": [np.float32(0.5)]})
    np.testing.assert_allclose(f.read_W(), W, rtol=1e-6)
    np.testing.assert_allclose(f.H, H, rtol=1e-6)
    assert f.error_history == [0.5] and f.col_labels[-1] == "g" and f.row_labels is None
    with pytest.raises(ValueError, match="do not form a factorization"):
        distnmf.save_factors(tmp_path / "g.zarr", W, H.T)


def test_atomic_path_publishes_or_leaves_nothing(tmp_path):
    from distnmf.storage import atomic_path

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "sub" / "x.zarr") as tmp:
            tmp.mkdir()
            raise RuntimeError("writer failed")
    assert list((tmp_path / "sub").iterdir()) == []
    with atomic_path(tmp_path / "sub" / "x.zarr") as tmp:
        tmp.mkdir()
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.zarr"]


def test_atomic_path_writes_files_too(tmp_path):
    """The one atomic-write mechanism serves files (plots, .npz, text) as well as stores."""
    from distnmf.storage import atomic_path

    target = tmp_path / "out" / "a.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("first")
    with pytest.raises(FileExistsError):
        with atomic_path(target) as tmp:
            raise AssertionError("must fail before writing")
    with pytest.raises(RuntimeError):
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    with atomic_path(target, overwrite=True) as tmp:
        tmp.write_text("second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
