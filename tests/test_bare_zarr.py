"""A path to a bare 2-D Zarr array (written by another tool) works wherever a store path does."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from sklearn.datasets import load_digits
from typer.testing import CliRunner

import distnmf
from distnmf.cli import app
from distnmf.factors import open_factors

FIT = {"n_components": 6, "init": "nndsvda", "max_iter": 30, "tol": 0, "random_state": 0}


@pytest.fixture(scope="module")
def digits_array(tmp_path_factory):
    """scikit-learn's digits as float64 in a bare Zarr v2 array with zstd and 500-row chunks."""
    X = load_digits().data
    path = tmp_path_factory.mktemp("bare") / "digits.zarr"
    zarr.create_array(path, shape=X.shape, chunks=(500, 64), dtype=np.float64, zarr_format=2)[:] = X
    return path, X


def test_open_matrix_reads_a_bare_array(digits_array):
    path, X = digits_array
    matrix = distnmf.open_matrix(path)
    assert matrix.shape == X.shape and not matrix.is_sparse and matrix.row_bounds[:3] == (0, 500, 1000)
    assert matrix.row_labels is None and matrix.col_labels is None
    np.testing.assert_array_equal(matrix.read_rows(490, 510), X[490:510])
    np.testing.assert_array_equal(matrix.dask[490:510].compute(), X[490:510])


def test_fit_on_a_bare_array_path_equals_in_memory(digits_array):
    path, X = digits_array
    by_path = distnmf.NMF(**FIT).fit(path)
    by_array = distnmf.NMF(**FIT).fit(zarr.open_array(path, mode="r"))
    in_memory = distnmf.NMF(**FIT).fit(X.astype(np.float32))
    # other row blocks (500-row chunks vs one in-memory block): equal up to float32 rounding
    np.testing.assert_allclose(by_path.components_, in_memory.components_, rtol=2e-3, atol=1e-4)
    np.testing.assert_array_equal(by_path.components_, by_array.components_)


def test_cli_fits_a_bare_array(digits_array, tmp_path):
    path, X = digits_array
    result = CliRunner().invoke(app, ["fit", str(path), "-k", "4", "--max-iter", "10", "--out",
                                      str(tmp_path / "f.zarr")])
    assert result.exit_code == 0, result.stderr
    assert open_factors(tmp_path / "f.zarr").shape == X.shape


def test_a_3d_bare_array_is_refused_with_its_path(tmp_path):
    zarr.create_array(tmp_path / "cube.zarr", shape=(4, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"cube.zarr holds a 3-D array; a matrix must be 2-D"):
        distnmf.NMF(2).fit(tmp_path / "cube.zarr")
