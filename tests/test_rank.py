"""Rank selection by cross-validation: the split keeps every row and column, is the same however
X is blocked, and the held-out error finds planted ranks (dense and sparse, in-process and on a
cluster); ``distnmf sweep --cv`` prints the table and draws the plot."""

from __future__ import annotations

import itertools
import json
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from PIL import Image
from sklearn.exceptions import ConvergenceWarning
from typer.testing import CliRunner

import distnmf
from distnmf.cli import app
from distnmf.matrixwriter import save_matrix
from distnmf.rank import HoldOut, column_anchors


def planted(m, n, rank, noise, seed, observed=1.0):
    """Non-negative rank-``rank`` data with Gaussian noise; a fraction ``observed`` stored (sparse) or all (dense)."""
    rng = np.random.default_rng(seed)
    X = (rng.random((m, rank)) @ rng.random((rank, n)) + noise * rng.standard_normal((m, n))).clip(0)
    X = X.astype(np.float32)
    if observed == 1.0:
        return X
    mask = rng.random(X.shape) < observed
    return sp.csr_array((X[mask], np.nonzero(mask)), shape=X.shape)


def test_split_keeps_every_row_and_column_and_ignores_blocking():
    S = sp.csr_array(sp.random(120, 50, density=0.05, format="csr", random_state=0, dtype=np.float32))
    S.data += 0.1
    anchors = column_anchors(S, 0, [7])[0]
    holdout = HoldOut(7, 0.5, anchors)
    train, rows, cols, values = holdout.split(S, 0)
    stored_rows = np.diff(S.indptr) > 0
    assert (np.diff(train.indptr)[stored_rows] > 0).all()  # every row with data keeps some
    assert (np.bincount(train.indices, minlength=50) > 0)[np.bincount(S.indices, minlength=50) > 0].all()
    assert train.nnz + len(values) == S.nnz and 0.3 * S.nnz < len(values) < 0.5 * S.nnz
    np.testing.assert_array_equal(S[rows, cols], values)
    # rows 40:120 split on their own give the same held-out entries
    part = holdout.split(S[40:], 40)
    np.testing.assert_array_equal(part[1] + 40, rows[rows >= 40])
    np.testing.assert_array_equal(part[2], cols[rows >= 40])


def recovered(report, rank):
    """How many replicates had their lowest held-out error at ``rank``."""
    return int((np.array(report.ks)[report.test_rmse.argmin(axis=0)] == rank).sum())


@pytest.mark.parametrize("rank, observed", [(3, 1.0), (6, 1.0), (3, 0.3), (6, 0.3)])
def test_planted_rank_is_recovered(rank, observed):
    X = planted(200, 90, rank, noise=0.1, seed=rank, observed=observed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        report = distnmf.select_rank(X, ks=[rank - 2, rank - 1, rank, rank + 1, rank + 3], test_fraction=0.1,
                                     replicates=3, max_iter=100)
    assert report.best_k == rank and report.one_se_k in (rank - 1, rank), report.table
    assert recovered(report, rank) >= 2, report.test_rmse
    train = [r["train_rmse"] for r in report.table]
    assert all(a > b for a, b in itertools.pairwise(train))  # training error keeps falling
    assert report.table[-1]["test_rmse"] > report.table[2]["test_rmse"]  # held-out error does not


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X = planted(300, 80, 4, noise=0.1, seed=1, observed=0.4)
    return save_matrix(X, tmp_path_factory.mktemp("rank") / "x.zarr").path


def test_cli_prints_the_table_and_draws_the_plot(store, tmp_path):
    result = CliRunner().invoke(app, ["sweep", str(store), "-k", "2,4,6", "--cv", "--test-fraction", "0.1",
                                      "--replicates", "2", "--max-iter", "100", "--json", "--plot",
                                      str(tmp_path / "rank.png")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["best_k"] == 4 and [r["n_components"] for r in printed["table"]] == [2, 4, 6]
    assert len(printed["test_rmse"]) == 3 and len(printed["test_rmse"][0]) == 2
    assert Image.open(tmp_path / "rank.png").size == (600, 400)
    table = CliRunner().invoke(app, ["sweep", str(store), "-k", "2,4", "--cv", "--replicates", "1",
                                     "--max-iter", "20"])
    assert table.exit_code == 0 and "test RMSE" in table.stdout and "best k =" in table.stdout


def test_fits_run_on_the_cluster(dask_client, store):
    # short fits: on this small matrix each iteration is a few scheduler round trips; the same
    # splits and iterations give the same errors as in-process
    with dask_client.as_current():
        on_cluster = distnmf.select_rank(store, ks=[2, 4], test_fraction=0.1, replicates=2, max_iter=10, tol=0)
    in_process = distnmf.select_rank(store, ks=[2, 4], test_fraction=0.1, replicates=2, max_iter=10, tol=0,
                                     client=False)
    np.testing.assert_allclose(on_cluster.test_rmse, in_process.test_rmse, rtol=1e-3)
    assert on_cluster.n_test == in_process.n_test


@pytest.mark.parametrize("kwargs, message", [
    ({"ks": []}, "ks is empty"),
    ({"ks": [0, 2]}, r"rank must be in 1..40 for a .* matrix .*got 0"),
    ({"ks": [2], "test_fraction": 1.5}, r"test_fraction must be in \(0, 1\)"),
    ({"ks": [2], "replicates": 0}, "replicates must be >= 1"),
    ({"ks": [2], "missing": "zero"}, "select_rank sets missing itself"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distnmf.select_rank(planted(60, 40, 2, 0.1, 0), **kwargs)
