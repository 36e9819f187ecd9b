"""The ``distnmf`` command line, end to end through Typer's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from distnmf.cli import app
from distnmf.factors import open_factors
from distnmf.matrixwriter import save_matrix

runner = CliRunner()
SHAPE = (4, 5)  # images of 4x5 pixels


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """30 tiny labelled "images" mixing 3 planted non-overlapping parts."""
    tmp = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(3)
    parts = np.zeros((3, SHAPE[0] * SHAPE[1]), dtype=np.float32)
    for p in range(3):
        parts[p, p * 6:(p + 1) * 6] = 1.0
    X = rng.random((30, 3)).astype(np.float32) @ parts + 0.01
    path = tmp / "imgs.zarr"
    save_matrix(X, path, [f"img{i}" for i in range(30)], [f"px{j}" for j in range(X.shape[1])],
                attrs={"image_shape": list(SHAPE)})
    return path, X


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_fit_top_similar_plot(store, tmp_path):
    path, X = store
    results = tmp_path / "r.zarr"
    res = invoke("fit", path, "-k", "3", "--max-iter", "40", "--random-state", "0", "--out", results)
    assert res.exit_code == 0, res.stderr
    assert f"wrote {results}" in res.stdout
    factors = open_factors(results)
    assert factors.shape == X.shape and factors.n_components == 3

    res = invoke("top", results, "--component", "1", "--top", "3", "--json")
    assert res.exit_code == 0, res.stderr
    (found,) = json.loads(res.stdout)
    assert found["component"] == 1 and len(found["rows"]) == 3 and len(found["columns"]) == 3
    assert found["columns"][0]["label"].startswith("px")
    res = invoke("top", results)
    assert res.exit_code == 0 and res.stdout.count("component ") == 3

    res = invoke("similar", results, "--row", "img4", "-k", "4", "--json")
    assert res.exit_code == 0, res.stderr
    hits = json.loads(res.stdout)
    assert len(hits) == 4 and "img4" not in [h["label"] for h in hits]
    res = invoke("similar", results, "--column", "px0", "-k", "3")
    assert res.exit_code == 0, res.stderr
    assert "px1" in res.stdout  # pixels of the same planted part move together

    res = invoke("plot", results, "--out", tmp_path / "pics")
    assert res.exit_code == 0, res.stderr
    for name in ("components.png", "convergence.png", "reconstruction.png", "components/component_002.png"):
        with Image.open(tmp_path / "pics" / name) as image:
            assert image.format == "PNG"


def test_sweep_and_svd(store, tmp_path):
    path, X = store
    res = invoke("sweep", path, "-k", "1,3", "--max-iter", "30", "--random-state", "0",
                 "--plot", tmp_path / "elbow.png", "--json")
    assert res.exit_code == 0, res.stderr
    found = json.loads(res.stdout)
    assert [r["n_components"] for r in found] == [1, 3]
    assert found[0]["reconstruction_err"] > found[1]["reconstruction_err"]
    with Image.open(tmp_path / "elbow.png") as image:
        assert image.size == (600, 400)

    res = invoke("svd", path, "-k", "2", "--random-state", "0", "--out", tmp_path / "svd.npz")
    assert res.exit_code == 0, res.stderr
    saved = np.load(tmp_path / "svd.npz")
    np.testing.assert_allclose(saved["S"], np.linalg.svd(X, compute_uv=False)[:2], rtol=1e-3)
    assert saved["U"].shape == (30, 2) and saved["Vt"].shape == (2, X.shape[1])


def test_help_has_examples():
    for command in ("fit", "top", "similar", "sweep", "svd", "plot", "serve", "demo"):
        res = invoke(command, "--help")
        assert res.exit_code == 0 and "Example: distnmf" in res.stdout, command
    assert "images" in invoke("ingest", "--help").stdout


@pytest.fixture(scope="module")
def results(store, tmp_path_factory):
    from distnmf.factors import save_factors

    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("cli-results") / "r.zarr"
    save_factors(path, rng.random((30, 3)), rng.random((3, 20)), row_labels=[f"img{i}" for i in range(30)])
    return path


@pytest.mark.parametrize(("args", "message"), [
    (["fit", "{tmp}/missing.zarr", "-k", "3"], "no matrix store at"),
    (["fit", "{store}", "-k", "50"], "-k must be in 1..20 for a 30x20 matrix"),
    (["fit", "{store}", "-k", "2", "--out", "{results}"], "already exists; pass --overwrite"),
    (["top", "{tmp}/missing.zarr"], "no factors store at"),
    (["top", "{results}", "--component", "9"], "component must be an integer in 0..2"),
    (["similar", "{results}", "--row", "cat"], "row label 'cat' not found"),
    (["similar", "{results}", "--row", "img1", "-k", "40"], "k=40 is larger than the number of other rows (29)"),
    (["similar", "{results}"], "exactly one of --row LABEL or --column LABEL"),
    (["similar", "{results}", "--column", "7", "--axis", "rows", "-k", "0"], "k must be >= 1"),
    (["sweep", "{store}", "-k", "2,x"], "comma-separated list of integers"),
    (["svd", "{store}", "-k", "99"], "n_components must be in"),
    (["plot", "{store}"], "not a distnmf factors store"),
])
def test_bad_input_one_line_exit_1(store, results, tmp_path, args, message):
    filled = [a.format(tmp=tmp_path, store=store[0], results=results) for a in args]
    res = invoke(*filled)
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "missing.zarr").exists()


def test_fit_on_a_scheduler(store, tmp_path, dask_cluster):
    results = tmp_path / "r.zarr"
    res = invoke("fit", store[0], "-k", "2", "--max-iter", "15", "--random-state", "0", "--out", results,
                 "--scheduler", dask_cluster.scheduler_address)
    assert res.exit_code == 0, res.stderr
    assert f"connected to {dask_cluster.scheduler_address}" in res.stderr
    assert open_factors(results).attrs["n_iter"] >= 1
