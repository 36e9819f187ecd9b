"""Hostile input against the real service: ``distnmf serve`` in its own process with its defaults
(no token, loopback, embedded TLS LocalCluster). Every case asserts a clear 4xx and that the
service process's memory (RSS, sampled every few ms while the request runs) stayed bounded."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

API = "/api/v1"
MB = 2**20
PEAK_MB = 250  # what any single request may add to the service process's resident memory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``distnmf serve`` as a child process, and a sampler of its resident memory."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.log = open(data_dir.parent / "service.log", "wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "distnmf"), "serve", "--port", str(self.port)],
            env={**os.environ, "DISTNMF_DATA_DIR": str(data_dir), "DISTNMF_N_WORKERS": "1", **env},
            stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}{API}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the service did not start:\n{self.read_log()}")
            time.sleep(0.2)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    @contextmanager
    def peak_growth(self) -> Iterator[list[int]]:
        """Yields a list that holds, after the block, the peak RSS growth in bytes over the block."""
        result: list[int] = []
        start = peak = self.rss()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, self.rss())
                time.sleep(0.003)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield result
        finally:
            done.set()
            sampler.join()
            result.append(max(peak, self.rss()) - start)

    def read_log(self) -> str:
        self.log.flush()
        return (self.data_dir.parent / "service.log").read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("hostile")
    env = {"DISTNMF_MAX_UPLOAD_BYTES": str(20 * MB), "DISTNMF_MAX_VALUES": str(60_000_000),
           "DISTNMF_MAX_ROWS": "1000000", "DISTNMF_MAX_LINE_BYTES": str(4 * MB),
           "DISTNMF_INGEST_MEMORY_BYTES": str(64 * MB), "DISTNMF_MAX_COMPONENTS": "50"}
    running = Service(root / "data", env)
    yield running
    running.stop()


@pytest.fixture
def http(service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{service.url}{API}", timeout=120) as client:
        yield client


def assert_clear_4xx(response: httpx.Response, status: int, *words: str) -> str:
    """The response has ``status``, a JSON detail naming ``words``, and no server path or trace."""
    assert response.status_code == status, response.text[:500]
    detail = json.dumps(response.json())
    for word in words:
        assert word in detail, detail
    for leak in ("Traceback", "/tmp", "/work", "/home", "uploads/", ".zarr.tmp"):
        assert leak not in detail, detail
    return detail


# --------------------------------------------------------------------------- safe defaults


def test_health_does_not_publish_the_scheduler(http) -> None:
    health = http.get("/health").json()
    assert health["auth"] is False and health["scheduler"] is None and health["n_workers"] == 1


def test_foreign_host_header_is_refused(service, http) -> None:
    """DNS rebinding: a page on rebind.attacker.example resolving to 127.0.0.1 must not get the API."""
    assert http.get("/jobs", headers={"Host": "rebind.attacker.example"}).status_code == 400
    assert http.get("/jobs", headers={"Host": f"rebind.attacker.example:{service.port}"}).status_code == 400
    assert http.get("/jobs", headers={"Host": f"localhost:{service.port}"}).status_code == 200
    assert http.get("/jobs").status_code == 200


def test_cross_site_writes_are_refused(service, http) -> None:
    upload = {"file": ("x.npy", _npy(np.ones((3, 2), dtype=np.float32)))}
    evil = {"Origin": "http://attacker.example"}
    assert_clear_4xx(http.post("/matrices", files=upload, headers=evil), 403, "cross-origin", "attacker.example")
    assert_clear_4xx(http.post("/jobs/any/cancel", headers=evil), 403, "cross-origin")
    assert_clear_4xx(http.post("/matrices", files=upload, headers={"Origin": "null"}), 403, "cross-origin")
    # the same origin (a page the service itself serves) and clients without Origin may write
    same = http.post("/matrices", files=upload, headers={"Origin": service.url})
    assert same.status_code == 201, same.text
    assert http.delete(f"/matrices/{same.json()['id']}").status_code == 204
    # no CORS grant by default: a cross-site page cannot read responses either
    preflight = http.options("/matrices", headers={**evil, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in http.get("/jobs", headers=evil).headers


def test_embedded_dask_cluster_refuses_clients_without_its_certificates(service) -> None:
    """An attacker on this machine who found the scheduler's port (here: from the service log) gets
    no connection, with plain TCP or with TLS and a certificate of their own: no other local
    process can run code on the scheduler or the workers."""
    from distributed import Client
    from distributed.security import Security

    found = re.search(r"started a LocalCluster at tls://127\.0\.0\.1:(\d+)", service.read_log())
    assert found, service.read_log()[-2000:]
    port = int(found.group(1))
    listening = {c.laddr.port for c in service.ps.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    assert port in listening
    for address, security in ((f"tcp://127.0.0.1:{port}", None), (f"tls://127.0.0.1:{port}", Security.temporary())):
        with pytest.raises(OSError):
            with Client(address, security=security, timeout="3s") as client:
                client.run_on_scheduler(os.getpid)


# --------------------------------------------------------------------------- bodies bounded while read


def _chunks(total: int, piece: bytes = b" " * MB) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield piece
        sent += len(piece)


def test_json_body_over_the_limit_refused_while_streaming(service, http) -> None:
    """200 MB of JSON sent chunked (no Content-Length): refused after ~16 MiB, not after reading it all."""
    def body() -> Iterator[bytes]:
        yield b'{"name": "x", "path": "'
        yield from _chunks(200 * MB, b"a" * MB)
        yield b'"}'

    with service.peak_growth() as peak:
        started = time.monotonic()
        response = http.post("/matrices", content=body(), headers={"Content-Type": "application/json"})
    assert_clear_4xx(response, 413, "max_json_bytes")
    assert time.monotonic() - started < 10
    assert peak[0] < PEAK_MB * MB, peak
    # a declared Content-Length over the limit is answered before any of the body is sent
    status, body = _raw_post(service, f"{API}/jobs", {"Content-Type": "application/json",
                                                      "Content-Length": str(300 * MB)})
    assert status == 413 and "max_json_bytes" in body


def test_chunked_multipart_upload_over_the_limit(service, http) -> None:
    boundary = "hostileboundary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
               f"Content-Type: text/csv\r\n\r\n").encode()
        yield from _chunks(190 * MB, b"1,2\n" * (MB // 4))
        yield f"\r\n--{boundary}--\r\n".encode()

    spooled = list((service.data_dir).rglob("*"))
    with service.peak_growth() as peak:
        response = http.post("/matrices", content=body(),
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert_clear_4xx(response, 413, "max_upload_bytes")
    assert peak[0] < PEAK_MB * MB, peak
    assert list((service.data_dir).rglob("*")) == spooled


def test_deeply_nested_json_and_huge_job_bodies(service, http) -> None:
    nested = b'{"matrix_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with service.peak_growth() as peak:
        response = http.post("/jobs", content=nested, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text[:300]
    assert peak[0] < PEAK_MB * MB
    rows = http.post("/jobs/none/transform", content=b'{"rows": [' + b"[1.0]," * 4_000_000 + b"[1.0]]}",
                     headers={"Content-Type": "application/json"})
    assert_clear_4xx(rows, 413, "max_json_bytes")


def _raw_post(service: Service, path: str, headers: dict[str, str]) -> tuple[int, str]:
    """Send only the request head over a socket; return the status and body the service answers."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"127.0.0.1:{service.port}", **headers}.items())
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            piece = conn.recv(65536)
            if not piece:
                break
            reply += piece
    status_line, _, rest = reply.decode().partition("\r\n")
    return int(status_line.split()[1]), rest.partition("\r\n\r\n")[2]


def _npy(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, arr)
    return buffer.getvalue()
