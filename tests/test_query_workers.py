"""Query worker processes beside the service (distnmf_api.query_workers): the real service under
uvicorn on a loopback port, a real query worker process sharing the port, the real SQLite file.

Which process serves a connection is the kernel's choice (SO_REUSEPORT): the tests open
connections until they hold one served by each process (psutil shows which process owns the
server side of a connection) and send their requests on those."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psutil
import pytest

from distnmf.client import Client
from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings

TOKEN = "qw-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Service:
    server: BackgroundServer
    client: Client
    matrix_id: str
    job_id: str

    @property
    def worker_pid(self) -> int:
        workers = self.server.query_workers
        assert workers is not None
        (pid,) = workers.pids
        return pid

    def connection(self, pid: int, attempts: int = 400) -> http.client.HTTPConnection:
        """A keep-alive connection to the service's port whose server side process ``pid`` owns."""
        for _ in range(attempts):
            conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=60)
            status, _ = request(conn, "GET", "/api/v1/version")  # accepted by then
            assert status == 200
            local = conn.sock.getsockname()[1]
            if any(c.raddr and c.raddr.port == local and c.laddr.port == self.server.port
                   for c in psutil.Process(pid).net_connections(kind="tcp")):
                return conn
            conn.close()
        raise AssertionError(f"no connection served by process {pid} in {attempts} attempts")

    def wait_job(self, conn: http.client.HTTPConnection, job_id: str) -> dict:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, body = request(conn, "GET", f"/api/v1/jobs/{job_id}?wait=5")
            assert status == 200, body
            if json.loads(body)["status"] in ("succeeded", "failed", "cancelled"):
                return json.loads(body)
        raise AssertionError(f"job {job_id} did not finish")


def request(conn: http.client.HTTPConnection, method: str, path: str, body: object = None,
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    encoded = None if body is None else json.dumps(body).encode()
    sent = {**AUTH, **({"Content-Type": "application/json"} if encoded is not None else {}), **(headers or {})}
    conn.request(method, path, body=encoded, headers=sent)
    response = conn.getresponse()
    return response.status, response.read()


def submit(conn: http.client.HTTPConnection, matrix_id: str, job_id: str, **params: object) -> dict:
    status, body = request(conn, "POST", "/api/v1/jobs", {"matrix_id": matrix_id, "job_id": job_id,
                                                          "n_components": 4, "max_iter": 40, "random_state": 0,
                                                          **params})
    assert status == 202, body
    return json.loads(body)


@pytest.fixture(scope="module")
def service(dask_cluster, tmp_path_factory) -> Iterator[Service]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("qworkers"), scheduler=dask_cluster.scheduler_address,
                        api_token=TOKEN, query_workers=1, max_json_bytes=2_000_000)
    rng = np.random.default_rng(5)
    X = (rng.gamma(0.5, 1.0, (300, 4)) @ rng.gamma(0.5, 1.0, (4, 40))).astype(np.float32)
    with BackgroundServer(settings) as server, Client(server.url, token=TOKEN) as client:
        assert server.query_workers is not None
        server.query_workers.wait_ready()
        matrix = client.upload(X, name="qw", row_labels=[f"r{i}" for i in range(300)],
                               col_labels=[f"c{j}" for j in range(40)])
        job = client.submit(matrix, n_components=4, max_iter=40, random_state=0, job_id="qw-job")
        assert job.wait(progress=False, timeout=120).status == "succeeded"
        yield Service(server, client, matrix.id, job.id)
    for pid in server.query_workers.pids:  # stopping the service stopped its query workers
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


QUERIES = [("GET", "/api/v1/jobs/{job}/similar?row=r7&k=5", None),
           ("GET", "/api/v1/jobs/{job}/similar?row=3&k=4&axis=columns", None),
           ("GET", "/api/v1/jobs/{job}/similar?row=9&k=3&least=true", None),
           ("GET", "/api/v1/jobs/{job}/components/1?top=6", None),
           ("POST", "/api/v1/jobs/{job}/transform", {"rows": [{"indices": [1, 5, 9], "values": [1.0, 2.0, 0.5]}],
                                                     "similar_k": 5}),
           ("POST", "/api/v1/jobs/{job}/transform", {"rows": [{"labels": ["c2", "c30"]}], "similar_k": 0}),
           ("GET", "/api/v1/jobs/nosuchjob/similar?row=1", None),
           ("GET", "/api/v1/jobs/{job}/similar?row=nosuchrow", None),
           ("GET", "/api/v1/jobs/{job}/components/99", None)]


def test_worker_answers_queries_itself_as_the_primary_does(service) -> None:
    worker = service.connection(service.worker_pid)
    answers = [request(worker, method, path.format(job=service.job_id), body) for method, path, body in QUERIES]
    factors = service.server.settings.layout.factors(service.job_id)
    assert service.server.app.state.served.opened(factors) is None  # the primary never opened them: not forwarded
    primary = service.connection(os.getpid())
    expected = [request(primary, method, path.format(job=service.job_id), body) for method, path, body in QUERIES]
    assert answers == expected
    assert [status for status, _ in answers] == [200] * 6 + [404] * 3
    assert json.loads(answers[0][1])["hits"][0]["label"].startswith("r")
    # a transform too large to fold in here runs on the cluster: the worker forwards it, body and all
    large = {"rows": [[1.0] * 40] * 7_000, "similar_k": 0}
    answer = request(worker, "POST", f"/api/v1/jobs/{service.job_id}/transform", large)
    assert answer[0] == 200 and answer == request(primary, "POST", f"/api/v1/jobs/{service.job_id}/transform", large)
    # the same guards: token, Host, problem+json errors, body limits
    for conn in (worker, primary):
        for path in (f"/api/v1/jobs/{service.job_id}/similar?row=1", "/api/v1/jobs"):
            status, body = request(conn, "GET", path, headers={"Authorization": "Bearer wrong"})
            assert status == 401 and json.loads(body)["detail"] == "missing or wrong bearer token"
        status, body = request(conn, "GET", f"/api/v1/jobs/{service.job_id}/similar?row=1",
                               headers={"Host": "evil.example"})
        assert status == 400 and "evil.example" in json.loads(body)["detail"]
        status, body = request(conn, "POST", f"/api/v1/jobs/{service.job_id}/transform",
                               {"rows": [[0.0] * 40] * 12_000})
        assert status == 413 and "max_json_bytes" in json.loads(body)["detail"]


def test_jobs_submitted_followed_cancelled_and_deleted_through_the_worker(service) -> None:
    worker = service.connection(service.worker_pid)
    submit(worker, service.matrix_id, "qw-live", max_iter=60)
    worker_events = service.connection(service.worker_pid)
    worker_events.request("GET", "/api/v1/jobs/qw-live/events", headers=AUTH)
    stream = worker_events.getresponse()
    assert stream.status == 200 and stream.getheader("content-type").startswith("text/event-stream")
    kinds = [json.loads(line[len(b"data: "):])["kind"] for line in stream.read().splitlines()
             if line.startswith(b"data: ")]  # the stream ends with the job
    assert kinds.count("progress") >= 1 and kinds[-1] == "state"
    status, body = request(worker, "GET", "/api/v1/jobs/qw-live")
    assert status == 200 and json.loads(body)["status"] == "succeeded"
    assert request(worker, "GET", "/api/v1/jobs/qw-live/similar?row=2&k=3")[0] == 200
    assert request(worker, "DELETE", "/api/v1/jobs/qw-live")[0] == 204
    assert request(worker, "GET", "/api/v1/jobs/qw-live")[0] == 404
    assert request(worker, "GET", "/api/v1/jobs/qw-live/similar?row=2&k=3")[0] == 404
    submit(worker, service.matrix_id, "qw-cancel", max_iter=10_000, tol=0.0)
    status, body = request(worker, "POST", "/api/v1/jobs/qw-cancel/cancel")
    assert status == 202 and json.loads(body)["status"] in ("cancelled", "cancelling")
    assert service.wait_job(worker, "qw-cancel")["status"] == "cancelled"
    page = json.loads(request(worker, "GET", "/api/v1/jobs?limit=1000")[1])
    assert {"qw-job", "qw-cancel"} <= {job["id"] for job in page["items"]}


def test_a_job_deleted_through_the_primary_is_not_served_stale(service) -> None:
    worker, primary = service.connection(service.worker_pid), service.connection(os.getpid())
    submit(primary, service.matrix_id, "qw-replaced")
    service.wait_job(primary, "qw-replaced")
    path = "/api/v1/jobs/qw-replaced/similar?row=r4&k=6"
    first = request(worker, "GET", path)
    assert first[0] == 200 and first == request(primary, "GET", path)  # the worker holds the factors now
    assert request(primary, "DELETE", "/api/v1/jobs/qw-replaced")[0] == 204
    assert request(worker, "GET", path)[0] == 404
    submit(primary, service.matrix_id, "qw-replaced", random_state=7, n_components=3)  # new factors, same id
    service.wait_job(primary, "qw-replaced")
    again = request(worker, "GET", path)
    assert again[0] == 200 and again == request(primary, "GET", path) and again != first


def test_a_killed_query_worker_is_replaced(service) -> None:
    workers = service.server.query_workers
    killed = service.worker_pid
    os.kill(killed, signal.SIGKILL)  # the connections it held or had queued are reset
    deadline = time.monotonic() + 60
    while workers.pids == [killed] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers.pids != [killed] and workers.restarts == 1
    health = service.client.health()
    assert health["query_workers"] == 1 and health["query_worker_restarts"] == 1
    path = f"/api/v1/jobs/{service.job_id}/similar?row=r1&k=5"
    for _ in range(20):  # new connections while the replacement starts
        conn = http.client.HTTPConnection("127.0.0.1", service.server.port, timeout=60)
        assert request(conn, "GET", path)[0] == 200
        conn.close()
    workers.wait_ready()
    replacement = service.connection(service.worker_pid)
    assert request(replacement, "GET", path) == request(service.connection(os.getpid()), "GET", path)
