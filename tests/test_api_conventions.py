"""API conventions on the real service: cursor pages, Idempotency-Key, cancelling, DELETE, problem details,
/version, and a client method for every route of the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from distnmf.client import Client, Conflict, JobCancelled, NotFound
from distnmf.wire import JobStatus
from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings

# every operation of the schema, and the client method that calls it
CLIENT_METHODS = {
    ("get", "/api/v1/health"): "Client.health", ("get", "/api/v1/version"): "Client.version",
    ("get", "/api/v1/matrices"): "Client.matrices", ("post", "/api/v1/matrices"): "Client.upload",
    ("get", "/api/v1/matrices/{matrix_id}"): "Client.matrix",
    ("delete", "/api/v1/matrices/{matrix_id}"): "Client.delete_matrix",
    ("post", "/api/v1/jobs"): "Client.submit", ("get", "/api/v1/jobs"): "Client.jobs",
    ("get", "/api/v1/jobs/{job_id}"): "Job.status", ("delete", "/api/v1/jobs/{job_id}"): "Job.delete",
    ("post", "/api/v1/jobs/{job_id}/cancel"): "Job.cancel", ("get", "/api/v1/jobs/{job_id}/events"): "Job.events",
    ("get", "/api/v1/jobs/{job_id}/factors/{factor}"): "Job.W",
    ("get", "/api/v1/jobs/{job_id}/components/{component}.png"): "Job.component_png",
    ("get", "/api/v1/jobs/{job_id}/components/{component}"): "Job.top",
    ("get", "/api/v1/jobs/{job_id}/rows/{row}.png"): "Job.row_png",
    ("get", "/api/v1/jobs/{job_id}/loss.png"): "Job.loss_png",
    ("get", "/api/v1/jobs/{job_id}/rank"): "Job.rank", ("get", "/api/v1/jobs/{job_id}/rank.png"): "Job.rank_png",
    ("get", "/api/v1/jobs/{job_id}/similar"): "Job.similar",
    ("get", "/api/v1/jobs/{job_id}/recommend"): "Job.recommend",
    ("post", "/api/v1/jobs/{job_id}/transform"): "Job.transform",
}


@pytest.fixture(scope="module")
def service(dask_cluster, tmp_path_factory) -> Iterator[tuple[str, Settings]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("conventions"), scheduler=dask_cluster.scheduler_address)
    with BackgroundServer(settings) as server:
        yield server.url, settings


@pytest.fixture(scope="module")
def client(service) -> Iterator[Client]:
    with Client(service[0]) as client:
        yield client


@pytest.fixture(scope="module")
def matrix(client):
    return client.upload(np.random.default_rng(0).random((80, 12)).astype(np.float32), name="small")


def test_every_route_has_a_client_method(service) -> None:
    import distnmf.client as module

    schema = httpx.get(f"{service[0]}/openapi.json").json()
    operations = {(method, path) for path, item in schema["paths"].items() for method in item}
    assert operations == set(CLIENT_METHODS)
    for name in CLIENT_METHODS.values():
        owner, method = name.split(".")
        assert callable(getattr(getattr(module, owner), method)), name


def test_version(client) -> None:
    info = client.version()
    assert info["api"] == "v1" and info["version"] and info["faiss"]


def test_cursor_pages_idempotency_key_and_delete(client, service, matrix) -> None:
    url = f"{service[0]}/api/v1/jobs"
    body = {"matrix_id": matrix.id, "n_components": 2, "max_iter": 3}
    first = httpx.post(url, json=body, headers={"Idempotency-Key": "key-1"})
    again = httpx.post(url, json=body, headers={"Idempotency-Key": "key-1"})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"] == "key-1"
    other = httpx.post(url, json={**body, "max_iter": 4}, headers={"Idempotency-Key": "key-1"})
    assert other.status_code == 409
    both = httpx.post(url, json={**body, "job_id": "a"}, headers={"Idempotency-Key": "b"})
    assert both.status_code == 422 and "differ" in both.json()["detail"]
    jobs = [client.job("key-1")] + [client.submit(matrix, n_components=2, max_iter=3) for _ in range(2)]
    for job in jobs:
        job.wait(progress=False, timeout=120)

    page = httpx.get(url, params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"] == page["items"][-1]["id"]
    rest = httpx.get(url, params={"limit": 2, "cursor": page["next_cursor"]}).json()
    ids = [j["id"] for j in page["items"] + rest["items"]]
    assert ids == [j.id for j in jobs] and rest["next_cursor"] is None
    assert [j.id for j in client.jobs()] == ids
    assert httpx.get(url, params={"cursor": "gone"}).status_code == 404
    matrices = httpx.get(f"{service[0]}/api/v1/matrices", params={"limit": 1}).json()
    assert [m["id"] for m in matrices["items"]] == [matrix.id] and matrices["next_cursor"] is None

    timings = jobs[0].status().timings
    assert set(timings) == {"validation", "initialisation", "iterations", "writing", "indexing"}
    assert all(seconds >= 0 for seconds in timings.values()) and timings["iterations"] > 0

    factors = service[1].layout.factors(jobs[1].id)
    assert factors.exists() and jobs[1].similar(0, k=2)
    jobs[1].delete()
    assert not factors.exists()
    with pytest.raises(NotFound):
        jobs[1].status()
    assert [j.id for j in client.jobs()] == [jobs[0].id, jobs[2].id]


def test_running_job_is_cancelling_then_cancelled_and_cannot_be_deleted_meanwhile(client, matrix) -> None:
    job = client.submit(matrix, n_components=3, max_iter=10_000, tol=0)
    for event in job.events():
        if event.kind == "progress":
            break
    with pytest.raises(Conflict, match="cancel it"):
        job.delete()
    assert job.cancel().status in (JobStatus.cancelling, JobStatus.cancelled)
    with pytest.raises(JobCancelled):
        job.wait(progress=False, timeout=60)
    states = [e.status for e in job.events() if e.kind == "state"]
    assert states[-1] == JobStatus.cancelled
    job.delete()


def test_errors_are_problem_details(service) -> None:
    response = httpx.get(f"{service[0]}/api/v1/jobs/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": "Not Found", "status": 404,
                                "detail": "no job with id 'nope'", "instance": "/api/v1/jobs/nope"}
    invalid = httpx.post(f"{service[0]}/api/v1/jobs", json={"n_components": 0})
    problem = invalid.json()
    assert invalid.status_code == 422 and invalid.headers["content-type"] == "application/problem+json"
    assert "body.matrix_id: Field required" in problem["detail"] and len(problem["errors"]) == 2
    schema = httpx.get(f"{service[0]}/openapi.json").json()
    assert "application/problem+json" in schema["paths"]["/api/v1/jobs/{job_id}"]["get"]["responses"]["404"]["content"]
