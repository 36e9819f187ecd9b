"""Object storage end to end against a real S3-protocol server (moto's server mode on loopback).

Matrices, factors and checkpoints live at ``s3://`` URLs; the workers are separate processes
of a LocalCluster that read their row blocks straight from the server, with the endpoint and
credentials only in their environment (``AWS_*``), as an operator would configure them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import zarr
from conftest import free_port

import distnmf
from distnmf import storage
from distnmf.factors import open_factors
from distnmf.matrixwriter import MatrixWriter, save_matrix
from distnmf.store import open_matrix

BUCKET = "distnmf-test"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A ``moto_server`` process on a free loopback port, with the AWS_* environment pointing at it
    for this process and for the worker processes started afterwards; a bucket created."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = {name: os.environ.get(name) for name in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        storage.filesystem(f"s3://{BUCKET}")[0].mkdir(BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def s3_cluster(s3_endpoint) -> Iterator[object]:
    """Two worker processes started after the AWS_* variables were set (they inherit them)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", memory_limit="2GiB") as cluster:
        yield cluster


@pytest.fixture
def prefix(s3_endpoint) -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"


def planted(m: int = 600, n: int = 80, k: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((m, k)) @ rng.random((k, n)) + 0.01 * rng.random((m, n))).astype(np.float32)


def keys(url: str) -> list[str]:
    fs, path = storage.filesystem(url)
    return [key[len(path):] for key in fs.find(path)]


def test_dense_and_sparse_round_trip_and_atomic_publication(prefix) -> None:
    import scipy.sparse as sp

    X = planted()
    matrix = save_matrix(X, f"{prefix}/dense.zarr", row_labels=[f"r{i}" for i in range(len(X))], chunk_rows=128)
    assert matrix.path == f"{prefix}/dense.zarr" and matrix.n_blocks == 5
    again = open_matrix(f"{prefix}/dense.zarr/")
    np.testing.assert_array_equal(again.to_memory(), X)
    assert again.row_labels[3] == "r3"
    S = sp.random(300, 50, density=0.05, random_state=0, format="csr", dtype=np.float32)
    sparse = save_matrix(S, f"{prefix}/sparse.zarr")
    assert (sparse.read_rows(0, 300) != S).nnz == 0
    first = sparse.dask.blocks[0].compute(scheduler="sync")  # read through the Dask graph, token from the ETag
    assert (first != S[:first.shape[0]]).nnz == 0
    # published: the root metadata exists; no temporary prefix remains
    assert "/zarr.json" in keys(f"{prefix}/dense.zarr")
    assert not [k for k in keys(prefix) if ".tmp-" in k]

    # a write that fails midway leaves nothing visible and nothing behind
    bad = X.copy()
    bad[500, 7] = -1
    with pytest.raises(ValueError, match="row 500, column 7"):
        save_matrix(bad, f"{prefix}/bad.zarr", chunk_rows=128)
    assert not storage.exists(f"{prefix}/bad.zarr") and not [k for k in keys(prefix) if "bad.zarr" in k]

    # replacing: refused without overwrite; with it, readers see the new store only
    with pytest.raises(FileExistsError):
        save_matrix(X, f"{prefix}/dense.zarr")
    save_matrix(2 * X[:100], f"{prefix}/dense.zarr", overwrite=True)
    np.testing.assert_array_equal(open_matrix(f"{prefix}/dense.zarr").to_memory(), 2 * X[:100])
    assert open_matrix(f"{prefix}/dense.zarr").row_labels is None  # nothing of the old store remains


def test_unpublished_store_is_ignored_and_credentials_in_urls_are_refused(prefix) -> None:
    writer = MatrixWriter(f"{prefix}/pending.zarr", n_cols=4)
    writer.append(np.ones((3, 4), dtype=np.float32))
    # objects exist under the temporary prefix, but nothing is published under the final name
    with pytest.raises(FileNotFoundError, match="no matrix store"):
        open_matrix(f"{prefix}/pending.zarr")
    writer.close()
    assert open_matrix(f"{prefix}/pending.zarr").shape == (3, 4)
    # a store whose root metadata is gone (e.g. a publication interrupted after unpublishing) is not read
    fs, path = storage.filesystem(f"{prefix}/pending.zarr")
    fs.rm_file(f"{path}/zarr.json")
    with pytest.raises(FileNotFoundError):
        open_matrix(f"{prefix}/pending.zarr")
    with pytest.raises(ValueError, match="must not carry credentials") as info:
        open_matrix(f"s3://AKIDEXAMPLE:hunter2@{BUCKET}/x.zarr")
    assert "hunter2" not in str(info.value) and "AKIDEXAMPLE" not in str(info.value)


def test_fit_interrupted_and_resumed_from_an_s3_checkpoint_with_worker_processes(prefix, s3_cluster,
                                                                                tmp_path) -> None:
    """Workers in other processes read X from S3 and write checkpoints and W to it. An interrupted
    factorize publishes nothing; resuming from its S3 checkpoint (X re-read from S3 on every pass)
    gives the factors of an uninterrupted fit of the same data stored locally."""
    from distributed import Client

    X = planted(seed=1)
    url = f"{prefix}/X.zarr"
    save_matrix(X, url, chunk_rows=150)
    local = save_matrix(X, tmp_path / "X.zarr", chunk_rows=150)
    params = {"n_components": 5, "max_iter": 12, "tol": 0, "random_state": 0}

    def stop_at_7(iteration: int, error: float, elapsed: float) -> None:
        if iteration == 7:
            raise KeyboardInterrupt

    with Client(s3_cluster, set_as_default=True) as client:
        assert all(w["nthreads"] == 1 for w in client.scheduler_info(n_workers=-1)["workers"].values())
        reference = distnmf.factorize(local, tmp_path / "ref.zarr", **params)
        with pytest.raises(KeyboardInterrupt):
            distnmf.factorize(url, f"{prefix}/X.nmf.zarr", checkpoint=f"{prefix}/ckpt.zarr", checkpoint_every=3,
                              callback=stop_at_7, **params)
        assert not storage.exists(f"{prefix}/X.nmf.zarr")  # nothing published by the interrupted fit
        assert zarr.open_group(f"{prefix}/ckpt.zarr", mode="r").attrs["distnmf_checkpoint"]["iteration"] == 6
        factors = distnmf.factorize(url, f"{prefix}/X.nmf.zarr", resume=f"{prefix}/ckpt.zarr",
                                    keep_in_memory=False, **params)
    assert factors.path == f"{prefix}/X.nmf.zarr" and factors.attrs["source"] == url
    assert factors.attrs["n_iter"] == 12
    # two fits on one cluster differ in float32 rounding (~1e-6 of the largest entry after 12
    # iterations, as in tests/test_resilience.py); one iteration more or less moves them by percents
    for ours, theirs in ((factors.H, reference.H), (factors.read_W(), reference.read_W())):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * float(theirs.max()))
    assert not [k for k in keys(prefix) if ".tmp-" in k]


def test_cli_ingest_and_fit_on_s3(prefix, tmp_path) -> None:
    from typer.testing import CliRunner

    from distnmf.cli import app

    X = planted(200, 30, seed=2)
    np.save(tmp_path / "X.npy", X)
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", "array", str(tmp_path / "X.npy"), f"{prefix}/cli.zarr", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["fit", f"{prefix}/cli.zarr", "-k", "3", "--max-iter", "15"])
    assert result.exit_code == 0, result.output
    factors = open_factors(f"{prefix}/cli.nmf-k3.zarr")
    assert factors.shape == X.shape and factors.n_components == 3
    result = runner.invoke(app, ["fit", f"{prefix}/missing.zarr", "-k", "3"])
    assert result.exit_code == 1 and "no matrix store at s3://" in result.output
    assert "Traceback" not in result.output


def test_service_with_an_s3_storage_root(prefix, s3_cluster, tmp_path) -> None:
    """The service keeps matrices, checkpoints and factors under an s3:// root; a registered
    store is named by a path (or URL) inside it; an upload is ingested into it."""
    from distnmf.client import BadRequest, Client
    from distnmf_api.server import BackgroundServer
    from distnmf_api.settings import Settings

    X = planted(300, 40, seed=3)
    save_matrix(X, f"{prefix}/incoming/X.zarr", chunk_rows=64)
    settings = Settings(data_dir=tmp_path / "service", storage_root=f"{prefix}/",
                        scheduler=s3_cluster.scheduler_address)
    with BackgroundServer(settings) as server, Client(server.url) as client:
        registered = client.register("incoming/X.zarr", name="X")
        by_url = client.register(f"{prefix}/incoming/X.zarr")
        assert registered.shape == by_url.shape == X.shape
        with pytest.raises(BadRequest, match="outside the service's storage root"):
            client.register(f"s3://{BUCKET}/elsewhere/X.zarr")
        with pytest.raises(BadRequest, match="contains '..'"):
            client.register("incoming/../../X.zarr")
        uploaded = client.upload(X[:50], name="upload")
        job = client.submit(registered, n_components=4, random_state=0, max_iter=25, tol=0)
        info = job.wait(progress=False, timeout=120)
        assert info.status == "succeeded", info
        factors = open_factors(f"{prefix}/factors/{job.id}.zarr")
        np.testing.assert_array_equal(job.H(), factors.H)
        reference = distnmf.NMF(4, random_state=0, max_iter=25, tol=0).fit(open_matrix(f"{prefix}/incoming/X.zarr"))
        np.testing.assert_allclose(factors.H, reference.components_, rtol=1e-4, atol=1e-5)
        assert not storage.exists(f"{prefix}/checkpoints/{job.id}.zarr")  # removed once the job succeeded
        assert storage.exists(f"{prefix}/factors/{job.id}.zarr/similarity/rows")  # the index, persisted beside
        assert len(job.similar(3, k=5)) == 5
        assert storage.exists(f"{prefix}/matrices/{uploaded.id}.zarr")
        client.delete_matrix(uploaded)
        assert not storage.exists(f"{prefix}/matrices/{uploaded.id}.zarr")
    assert not (tmp_path / "service" / "factors").exists()  # nothing of the stores went to the local data dir
