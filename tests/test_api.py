"""The service end to end: real uvicorn on a loopback port, a real LocalCluster, the Python client."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import httpx
import numpy as np
import pytest

from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings
import distnmf
from distnmf import analysis
from distnmf.client import BadRequest, Client, Conflict, InvalidRequest, JobCancelled, NotFound, \
    PayloadTooLarge, Unauthorized
from distnmf.factors import open_factors
from distnmf.matrixwriter import MatrixWriter, save_matrix
from distnmf.synth import ratings, tag_set

LIMITS = {"max_components": 40, "max_k": 50, "max_range": 100, "max_upload_bytes": 400_000}


def pixel_rows(n: int = 240, seed: int = 0) -> np.ndarray:
    """Images of 6x6 pixels mixed from 4 planted parts: shape (n, 36)."""
    rng = np.random.default_rng(seed)
    parts = np.zeros((4, 6, 6), dtype=np.float32)
    parts[0, :3, :3] = parts[1, :3, 3:] = parts[2, 3:, :3] = parts[3, 3:, 3:] = 1
    coefficients = rng.gamma(1.0, 1.0, size=(n, 4)) * (rng.random((n, 4)) < 0.6)
    return (coefficients @ parts.reshape(4, -1) + 0.01 * rng.random((n, 36))).astype(np.float32)


@pytest.fixture(scope="module")
def service(dask_cluster, tmp_path_factory) -> Iterator[tuple[str, Settings]]:
    data_dir = tmp_path_factory.mktemp("service-data")
    settings = Settings(data_dir=data_dir, scheduler=dask_cluster.scheduler_address, **LIMITS)
    with BackgroundServer(settings) as server:
        yield server.url, settings


@pytest.fixture(scope="module")
def client(service) -> Iterator[Client]:
    with Client(service[0]) as client:
        yield client


@pytest.fixture(scope="module")
def pixels(client):
    X = pixel_rows()
    matrix = client.upload(X, name="pixels", row_labels=[f"img{i:03d}" for i in range(len(X))], image_shape=(6, 6))
    return X, matrix


@pytest.fixture(scope="module")
def tags(client, service):
    tag_set(service[1].data_dir / "stores" / "tags.zarr", n_items=300, n_tags=120, n_assignments=3000,
            n_topics=4, topic_size=8, seed=1)
    return client.register("stores/tags.zarr", name="tags")


def test_health(client, dask_cluster) -> None:
    health = client.health()
    assert health["status"] == "ok"
    assert health["scheduler"] is None  # published only to token holders: without a token, never
    assert health["n_workers"] == 2
    assert health["dashboard_url"].startswith("http://127.0.0.1:")
    assert health["auth"] is False


def test_full_flow_matches_library(client, service, pixels, tags) -> None:
    X, matrix = pixels
    assert matrix.shape == X.shape and matrix.image_shape == [6, 6] and matrix.has_row_labels
    assert {m.id for m in client.matrices()} >= {matrix.id, tags.id}
    job = client.submit(matrix, n_components=4, random_state=0, max_iter=60)
    info = job.wait(progress=False, timeout=120)
    assert info.status == "succeeded" and info.iteration == len(info.error_history) > 0
    assert info.error == info.error_history[-1] < 0.2
    assert [j.id for j in client.jobs(status="succeeded")].count(job.id) == 1

    factors = open_factors(service[1].layout.factors(job.id))
    np.testing.assert_array_equal(job.W(), factors.read_W())
    np.testing.assert_array_equal(job.W(10, 20), factors.read_W(10, 20))
    np.testing.assert_array_equal(job.H(), factors.H)
    np.testing.assert_allclose(info.error_history, factors.error_history, rtol=1e-6)
    relative = np.linalg.norm(X - factors.read_W() @ factors.H) / np.linalg.norm(X)
    assert relative == pytest.approx(info.error, rel=1e-2)

    top = job.top(1, top=5)
    expected = analysis.top_components(factors, 1, top=5)
    assert [(h.index, h.label) for h in top["rows"]] == [(h.index, h.label) for h in expected["rows"]]
    assert [h.index for h in top["columns"]] == [h.index for h in expected["columns"]]

    assert (factors.path / "similarity" / "rows" / "meta.json").exists()  # built when the job finished
    hits = job.similar("img007", k=5)
    assert [(h.index, h.label) for h in hits] == [(h.index, h.label)
                                                  for h in analysis.similar(factors, 7, k=5, method="scan")]
    assert job.similar(7, k=3, least=True)[0].score <= hits[-1].score
    assert len(job.similar(3, k=4, axis="columns")) == 4

    coefficients, near = job.transform(X[:3], similar_k=2)
    library, library_near = analysis.transform(factors, X[:3], similar_k=2)
    np.testing.assert_allclose(coefficients, library, rtol=1e-4, atol=1e-5)
    assert [h.index for h in near[0]] == [h.index for h in library_near[0]]
    alone = np.concatenate([job.transform(X[i:i + 1])[0] for i in range(3)])  # rows are folded in alone
    np.testing.assert_allclose(alone, coefficients, rtol=1e-5, atol=1e-6 * coefficients.max())

    assert job.component_png(0).startswith(b"\x89PNG")
    assert job.loss_png().startswith(b"\x89PNG")

    raw = httpx.get(f"{service[0]}/api/v1/jobs/{job.id}/factors/W", params={"start": 5, "stop": 8}).json()
    assert raw["shape"] == [3, 4]
    np.testing.assert_allclose(raw["data"], factors.read_W(5, 8), rtol=1e-6)

    tag_job = client.submit(tags, n_components=4, random_state=0, max_iter=40)
    tag_job.wait(progress=False, timeout=120)
    tag_factors = open_factors(service[1].layout.factors(tag_job.id))
    recommended = tag_job.recommend("item005", k=5)
    expected_hits = analysis.recommend(tag_factors, service[1].data_dir / "stores" / "tags.zarr", "item005", k=5)
    assert [(h.index, h.label) for h in recommended] == [(h.index, h.label) for h in expected_hits]
    labels = list(tag_factors.col_labels[:3])
    by_label, _ = tag_job.transform([labels, {"indices": [0, 1, 2]}])
    np.testing.assert_allclose(by_label[0], by_label[1], rtol=1e-5)


def test_cancel_running_job(client, pixels) -> None:
    job = client.submit(pixels[1], n_components=4, max_iter=5000, tol=0.0, init="random", random_state=0)
    info = job.status()
    deadline = time.monotonic() + 60
    while info.iteration < 2 and time.monotonic() < deadline:
        info = job.status(wait=5, after=info.iteration)
    assert info.status == "running"
    job.cancel()
    start = time.monotonic()
    with pytest.raises(JobCancelled):
        job.wait(progress=False, timeout=30)
    assert time.monotonic() - start < 5
    with pytest.raises(Conflict, match="cancelled"):
        job.W()


def test_idempotent_submission(client, pixels) -> None:
    first = client.submit(pixels[1], n_components=2, max_iter=5, job_id="same-job")
    again = client.submit(pixels[1], n_components=2, max_iter=5, job_id="same-job")
    assert first.id == again.id == "same-job"
    with pytest.raises(Conflict, match="different body"):
        client.submit(pixels[1], n_components=3, max_iter=5, job_id="same-job")
    first.wait(progress=False, timeout=60)


def test_unknown_ids_are_404(client, service) -> None:
    with pytest.raises(NotFound):
        client.matrix("nope")
    with pytest.raises(NotFound):
        client.job("nope").status()
    with pytest.raises(NotFound):
        client.submit("nope", n_components=2)
    response = httpx.get(f"{service[0]}/api/v1/jobs/nope/factors/W")
    assert response.status_code == 404 and "nope" in response.json()["detail"]


def test_invalid_bodies_are_422(client, service, pixels) -> None:
    url = f"{service[0]}/api/v1/jobs"
    for body in ({"matrix_id": pixels[1].id, "n_components": 0},
                 {"matrix_id": pixels[1].id, "n_components": 2, "solver": "magic"},
                 {"matrix_id": pixels[1].id, "n_components": 2, "unknown": 1},
                 {"matrix_id": pixels[1].id, "n_components": 2, "solver": "hals", "beta_loss": "kullback-leibler"},
                 {"n_components": 2}):
        response = httpx.post(url, json=body)
        assert response.status_code == 422, body
    with pytest.raises(InvalidRequest, match="min"):
        client.submit(pixels[1], n_components=37)
    response = httpx.post(f"{service[0]}/api/v1/matrices", json={"path": 3})
    assert response.status_code == 422


def test_limits(client, service, pixels) -> None:
    with pytest.raises(InvalidRequest, match="n_components=41 exceeds the limit max_components=40"):
        client.submit(pixels[1], n_components=41)
    job = client.submit(pixels[1], n_components=3, max_iter=5, random_state=0)
    job.wait(progress=False, timeout=60)
    with pytest.raises(InvalidRequest, match="max_k=50"):
        job.similar(0, k=51)
    response = httpx.get(f"{service[0]}/api/v1/jobs/{job.id}/factors/W", params={"start": 0, "stop": 150})
    assert response.status_code == 422 and "max_range=100" in response.json()["detail"]
    assert job.W().shape == (240, 3)  # the client downloads in pages of max_range rows
    with pytest.raises(PayloadTooLarge, match="max_upload_bytes"):
        client.upload(np.ones((1000, 120), dtype=np.float32))


def test_paths_outside_the_data_dir_are_400(client, service, tmp_path) -> None:
    data_dir = service[1].data_dir
    outside = tmp_path / "secret.npy"
    np.save(outside, np.ones((4, 4), dtype=np.float32))
    os.symlink(tmp_path, data_dir / "link-out")
    store = data_dir / "escape.zarr"
    store.mkdir()
    os.symlink(outside, store / "X")
    for path in ("../secret.npy", "a/../../secret.npy", str(outside), "/etc/passwd", "link-out/secret.npy",
                 "escape.zarr"):
        with pytest.raises(BadRequest):
            client.register(path, format="npy" if path.endswith(".npy") else "zarr")


def test_negative_values_are_422_with_the_reason(client, service) -> None:
    with MatrixWriter(service[1].data_dir / "negative.zarr", n_cols=3, validate=False) as writer:
        writer.append(np.array([[1, 2, 3], [4, -5, 6]], dtype=np.float32))
    with pytest.raises(InvalidRequest, match=r"negative value \(-5.0\) at row 1, column 1"):
        client.register("negative.zarr")
    with pytest.raises(InvalidRequest, match="negative"):
        client.upload(np.array([[1.0, -1.0]]))


def test_auth(dask_cluster, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, scheduler=dask_cluster.scheduler_address, api_token="s3cret")
    with BackgroundServer(settings) as server:
        assert httpx.get(f"{server.url}/api/v1/health").status_code == 200
        assert httpx.get(f"{server.url}/docs").status_code == 200
        for token in (None, "wrong"):
            with Client(server.url, token=token) as client, pytest.raises(Unauthorized):
                client.matrices()
        response = httpx.get(f"{server.url}/api/v1/jobs", headers={"Authorization": "Bearer wrong"})
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        with Client(server.url, token="s3cret") as client:
            assert client.matrices() == []
            assert client.health()["auth"] is True


def test_factors_of_unfinished_job_are_409(client, pixels) -> None:
    job = client.submit(pixels[1], n_components=3, max_iter=5000, tol=0.0, init="random")
    with pytest.raises(Conflict):
        job.H()
    job.cancel()
    with pytest.raises(JobCancelled):
        job.wait(progress=False, timeout=30)


def test_openapi_has_examples_for_every_body(service) -> None:
    schema = httpx.get(f"{service[0]}/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                schema_ref = content.get("schema", {}).get("$ref", "")
                component = schema["components"]["schemas"].get(schema_ref.rsplit("/", 1)[-1], {})
                assert content.get("examples") or component.get("examples"), (method, path, media)


def test_delete_matrix(client, service) -> None:
    matrix = client.upload(np.ones((5, 4)), name="scratch")
    store = service[1].layout.ingested(matrix.id)
    assert store.exists()
    client.delete_matrix(matrix)
    assert not store.exists()
    with pytest.raises(NotFound):
        client.matrix(matrix.id)
    assert Path(service[1].data_dir / "distnmf.sqlite").exists()


def test_masked_rating_job_recommends_predicted_ratings(client, service) -> None:
    ratings(service[1].data_dir / "stores" / "ratings.zarr", n_users=400, n_items=60, n_components=3,
            density=0.2, seed=2)
    matrix = client.register("stores/ratings.zarr", name="ratings")
    job = client.submit(matrix, n_components=3, random_state=0, max_iter=30, missing="unobserved", alpha_W=0.1)
    assert job.wait(progress=False, timeout=120).status == "succeeded"
    factors = open_factors(service[1].layout.factors(job.id))
    assert factors.attrs["params"]["missing"] == "unobserved"
    hits = job.recommend("u007", k=5)
    expected = analysis.recommend(factors, service[1].data_dir / "stores" / "ratings.zarr", "u007", k=5)
    assert [(h.label, round(h.score, 4)) for h in hits] == [(h.label, round(h.score, 4)) for h in expected]
    assert 3 < hits[0].score < 7  # a predicted rating on the 1-5 star scale
    with pytest.raises(InvalidRequest, match="missing='unobserved' fits with solver='hals'"):
        client.submit(matrix, n_components=3, solver="mu", missing="unobserved")


def test_rank_job_serves_the_library_report_and_plot(client, service) -> None:
    rng = np.random.default_rng(3)
    X = (rng.random((150, 3)) @ rng.random((3, 30)) + 0.1 * rng.standard_normal((150, 30))).clip(0)
    save_matrix(X.astype(np.float32), service[1].data_dir / "stores" / "planted3.zarr")
    matrix = client.register("stores/planted3.zarr", name="planted3")
    options = {"test_fraction": 0.1, "replicates": 2, "max_iter": 15, "random_state": 0}
    job = client.select_rank(matrix, [1, 3, 5], **options)
    assert job.wait(progress=False, timeout=120).status == "succeeded"
    served = job.rank()
    expected = distnmf.select_rank(X.astype(np.float32), [1, 3, 5], client=False, **options)  # in process
    assert served["best_k"] == expected.best_k == 3 and served["one_se_k"] == expected.one_se_k
    assert served["n_test"] == expected.n_test
    for got, want in zip(served["table"], expected.table, strict=True):
        assert got.keys() == want.keys() and got["n_components"] == want["n_components"]
        np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)], rtol=1e-3)
    assert job.rank_png().startswith(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(NotFound, match="no factors"):
        job.W()
    url = f"{service[0]}/api/v1/jobs"
    for body, reason in (({"ks": [2, 31]}, "each of ks must be in 1..30"), ({"ks": [0, 2]}, "greater than or equal"),
                         ({"ks": []}, "at least 1"), ({}, "needs ks"), ({"ks": [2], "test_fraction": 0.6}, "0.5"),
                         ({"ks": [2], "test_fraction": 0}, "greater than 0"), ({"ks": [2], "replicates": 0}, ">= 1|greater"),
                         ({"ks": [2], "n_components": 2}, "sets n_components"), ({"ks": [2], "solver": "mu"}, "hals")):
        response = httpx.post(url, json={"matrix_id": matrix.id, "kind": "rank", **body})
        assert response.status_code == 422 and re.search(reason, response.text), (body, response.text)
    response = httpx.post(url, json={"matrix_id": matrix.id, "n_components": 2, "ks": [2]})
    assert response.status_code == 422 and "kind='rank' jobs only" in response.text


def test_approximate_index_answers_on_the_event_loop(dask_cluster, tmp_path) -> None:
    """With the approximate index (forced for a small tag set with many repeated rows), similar rows and
    one-row transforms are answered on the event loop: the same answers as the library on the same
    persisted index, for concurrent requests, and the index did not fall back to exact."""
    from concurrent.futures import ThreadPoolExecutor

    from distnmf import index

    settings = Settings(data_dir=tmp_path / "data", scheduler=dask_cluster.scheduler_address, approximate_from_rows=0)
    tag_set(settings.data_dir / "stores" / "tags.zarr", n_items=3000, n_tags=200, n_assignments=12_000,
            n_topics=6, topic_size=10, seed=2)
    with BackgroundServer(settings) as server, Client(server.url) as client:
        job = client.submit(client.register("stores/tags.zarr", name="tags"), n_components=6, random_state=0,
                            max_iter=30)
        assert job.wait(progress=False, timeout=120).status == "succeeded"
        factors = open_factors(settings.layout.factors(job.id))
        built = index.IndexCache(approximate_from=0).get(factors, "rows")  # the persisted one, loaded
        assert built.kind == "ivf" and built.members is not None and built.approximate.ntotal < 3000
        rows = list(range(0, 3000, 97))
        with ThreadPoolExecutor(8) as pool:
            served = list(pool.map(lambda r: job.similar(r, k=10), rows))
            folded = list(pool.map(lambda r: job.transform([{"indices": [r % 200, (r * 7) % 200]}], similar_k=5),
                                   rows))
        for r, hits, (w, near) in zip(rows, served, folded):
            assert [h.index for h in hits] == [h.index for h in analysis.similar_in(built, factors, r, k=10)]
            library_w, library_near = analysis.transform(factors, np.eye(200, dtype=np.float32)[[r % 200]] +
                                                         np.eye(200, dtype=np.float32)[[(r * 7) % 200]],
                                                         similar_k=5, cache=index.IndexCache(approximate_from=0))
            np.testing.assert_allclose(w, library_w, rtol=1e-4, atol=1e-6)
            assert [h.index for h in near[0]] == [h.index for h in library_near[0]]
        assert [h.index for h in job.similar(5, k=4, least=True)] == \
            [h.index for h in analysis.similar(factors, 5, k=4, least=True, method="scan")]
    scanning = settings.model_copy(update={"index_memory_bytes": 0})  # no index: W scanned on the cluster
    with BackgroundServer(scanning) as server, Client(server.url) as client, ThreadPoolExecutor(8) as pool:
        job = client.job(job.id)
        folded = list(pool.map(lambda r: job.transform([{"indices": [r % 200]}], similar_k=3)[1][0], rows[:16]))
        similar = list(pool.map(lambda r: job.similar(r, k=3), rows[:16]))
    with dask.config.set(scheduler="threads"):  # the library's scan here, in this process
        _same_as_library_scans(rows, folded, similar, factors)


def _same_as_library_scans(rows: list[int], folded: list, similar: list, factors) -> None:
    for r, near, hits in zip(rows, folded, similar):
        assert [h.index for h in hits] == [h.index for h in analysis.similar(factors, r, k=3, method="scan")]
        x = np.eye(200, dtype=np.float32)[[r % 200]]
        assert [h.index for h in near] == [h.index for h in analysis.transform(factors, x, 3, method="scan")[1][0]]


def test_a_started_service_is_ready_for_its_first_transform(service) -> None:
    """Start-up loads the compiled fold-in (in a fresh process: numba and its machine code, ~1 s a
    first transform would otherwise spend holding the GIL while other queries wait) and freezes the
    garbage collector's view of what it loaded (a full collection no longer scans it)."""
    import gc
    import subprocess
    import sys

    assert gc.get_freeze_count() > 10_000  # this process's service froze its start-up objects
    probe = ("import gc; from distnmf import foldin_kernel; from distnmf_api.serving import ready_to_serve; "
             "before = len(foldin_kernel._rows_shared.signatures); ready_to_serve(); "
             "print(before, len(foldin_kernel._rows_shared.signatures), gc.get_freeze_count() > 10_000)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["0", "1", "True"]
