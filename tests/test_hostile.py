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
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from conftest import free_port

API = "/api/v1"
MB = 2**20
PEAK_MB = 250  # what any single request may add to the service process's resident memory


class Service:
    """``distnmf serve`` as a child process, and a sampler of its resident memory."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        self.port = free_port()
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
    detail = json.dumps(response.json(), ensure_ascii=False)
    for word in words:
        assert word in detail, detail
    for leak in ("Traceback", "/tmp", "/work", "/home", "uploads/", ".zarr.tmp"):
        assert leak not in detail, detail
    return detail


# --------------------------------------------------------------------------- safe defaults


def test_health_does_not_publish_the_scheduler(http) -> None:
    health = http.get("/health").json()
    assert health["auth"] is False and health["scheduler"] is None and health["n_workers"] == 1


def test_host_names_and_patterns() -> None:
    from distnmf_api.guards import AllowedHosts, host_name

    assert [host_name(h) for h in ("[::1]:8000", "[::1]", "LocalHost:80", "a.example", "::1")] == \
        ["::1", "::1", "localhost", "a.example", "::1"]
    hosts = AllowedHosts(None, ["localhost", "*.example.com"])  # type: ignore[arg-type]
    assert hosts.allows("localhost") and hosts.allows("api.example.com")
    assert not hosts.allows("example.com.attacker.net") and not hosts.allows("attacker-example.com")
    assert AllowedHosts(None, ["*"]).allows("anything")  # type: ignore[arg-type]


def test_foreign_host_header_is_refused(service, http) -> None:
    """DNS rebinding: a page on rebind.attacker.example resolving to 127.0.0.1 must not get the API."""
    refused = http.get("/jobs", headers={"Host": "rebind.attacker.example"})
    assert refused.status_code == 400 and refused.headers["content-type"] == "application/problem+json"
    problem = refused.json()
    assert problem["status"] == 400 and problem["title"] == "Bad Request" and problem["instance"] == "/api/v1/jobs"
    assert "rebind.attacker.example" in problem["detail"] and "DISTNMF_ALLOWED_HOSTS" in problem["detail"]
    assert http.get("/jobs", headers={"Host": f"rebind.attacker.example:{service.port}"}).status_code == 400
    assert http.get("/jobs", headers={"Host": f"127.0.0.1.attacker.example:{service.port}"}).status_code == 400
    assert http.get("/jobs", headers={"Host": f"localhost:{service.port}"}).status_code == 200
    assert http.get("/jobs", headers={"Host": f"[::1]:{service.port}"}).status_code == 200
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


# --------------------------------------------------------------------------- files that expand


def _npz_member(path: Path, shape: tuple[int, int], *, rows_written: int | None = None, compressed: bool = True,
                dtype: str = "<f4") -> None:
    """A .npz whose one member declares ``shape`` and holds ``rows_written`` rows of zeros (all by
    default), written a row block at a time so the test never holds the array."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    rows_written = shape[0] if rows_written is None else rows_written
    row = bytes(shape[1] * np.dtype(dtype).itemsize) if rows_written else b""
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for start in range(0, rows_written, 100):
                member.write(row * min(100, rows_written - start))


def _upload(http: httpx.Client, path: Path, **fields: str) -> httpx.Response:
    with open(path, "rb") as f:
        return http.post("/matrices", files={"file": (path.name, f)}, data=fields)


def test_zip_bomb_npz_is_refused_from_its_header(service, http, tmp_path) -> None:
    """A ~1 MB .npz declaring 5,000 x 50,000 float32 (1 GB of zeros): refused before inflating."""
    bomb = tmp_path / "bomb.npz"
    _npz_member(bomb, (5000, 50_000))
    assert bomb.stat().st_size < 2 * MB
    with service.peak_growth() as peak:
        response = _upload(http, bomb)
    assert_clear_4xx(response, 422, "bomb.npz", "max_values", "DISTNMF_MAX_VALUES")
    assert peak[0] < PEAK_MB * MB, peak


def test_compressed_npz_within_limits_streams_by_rows(service, http, tmp_path) -> None:
    """1,600 x 25,000 float32 zeros (160 MB expanded) from a small .npz: ingested with memory bounded."""
    archive = tmp_path / "zeros.npz"
    _npz_member(archive, (1600, 25_000))
    with service.peak_growth() as peak:
        response = _upload(http, archive, name="zeros")
    assert response.status_code == 201, response.text
    assert response.json()["shape"] == [1600, 25_000]
    assert peak[0] < 160 * MB, f"peak growth {peak[0] / MB:.0f} MB for a 160 MB matrix: not streamed"
    assert http.delete(f"/matrices/{response.json()['id']}").status_code == 204


@pytest.mark.parametrize("shape, rows_written, words", [
    ((10**12, 10**12), 0, ("max_rows",)),           # absurd declared sizes
    ((1000, 1000), 3, ("truncated",)),              # a member shorter than its header says
])
def test_npz_members_with_lying_headers(service, http, tmp_path, shape, rows_written, words) -> None:
    path = tmp_path / "liar.npz"
    _npz_member(path, shape, rows_written=rows_written)
    with service.peak_growth() as peak:
        response = _upload(http, path)
    assert_clear_4xx(response, 422, "liar.npz", *words)
    assert peak[0] < PEAK_MB * MB


def test_npz_with_pickled_objects_or_garbage(service, http, tmp_path) -> None:
    objects = tmp_path / "objects.npz"
    _npz_member(objects, (2, 2), dtype="|O", rows_written=0)
    assert_clear_4xx(_upload(http, objects), 422, "objects.npz", "real numbers")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04" + os.urandom(5000))
    assert_clear_4xx(_upload(http, garbage), 422, "garbage.npz")


def test_matrix_market_header_declaring_50_million_rows(service, http, tmp_path) -> None:
    """The 60-byte file of the issue: refused from its header, nothing allocated."""
    path = tmp_path / "huge.mtx"
    path.write_text("%%MatrixMarket matrix coordinate real general\n50000000 10 0\n")
    with service.peak_growth() as peak:
        response = _upload(http, path)
    assert_clear_4xx(response, 422, "huge.mtx", "max_rows")
    assert peak[0] < 50 * MB, peak


def test_empty_rows_never_materialise_indptr(service, http, tmp_path) -> None:
    """900,000 rows holding 2 entries: the CSR index is written a block at a time."""
    path = tmp_path / "tall.mtx"
    path.write_text("%%MatrixMarket matrix coordinate real general\n900000 10 2\n1 1 1.0\n900000 10 2.0\n")
    with service.peak_growth() as peak:
        response = _upload(http, path)
    assert response.status_code == 201, response.text
    assert response.json()["shape"] == [900_000, 10] and response.json()["nnz"] == 2
    assert peak[0] < 100 * MB, peak
    assert http.delete(f"/matrices/{response.json()['id']}").status_code == 204


def test_csv_line_of_gigabytes(service, http) -> None:
    """A registered 4 GiB CSV without a newline (a sparse file: it costs no disk): refused after reading
    max_line_bytes of it, never the line."""
    path = service.data_dir / "one-line.csv"
    with open(path, "wb") as f:
        f.write(b"1,")
        f.truncate(4 * 2**30)
    try:
        with service.peak_growth() as peak:
            response = http.post("/matrices", json={"path": "one-line.csv", "format": "csv"})
        assert_clear_4xx(response, 422, "one-line.csv", "max_line_bytes")
        assert peak[0] < 100 * MB, peak
    finally:
        path.unlink()


def test_errors_name_the_file_as_the_client_does(service, http, tmp_path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("1,2\nu0000,3\n")
    detail = assert_clear_4xx(_upload(http, path, name="my ratings"), 422, "'my ratings'", "line 2", "not a number")
    assert "uploads" not in detail and ".tmp" not in detail


def test_label_list_longer_than_the_matrix(service, http, tmp_path) -> None:
    matrix = _npy(np.ones((5, 3), dtype=np.float32))
    labels = b"".join(b"label-%d\n" % i for i in range(1_000_000))
    with service.peak_growth() as peak:
        response = http.post("/matrices", files={"file": ("m.npy", matrix), "row_labels": ("rows.txt", labels)})
    assert_clear_4xx(response, 422, "row_labels", "more than 5 entries")
    assert peak[0] < PEAK_MB * MB
    bad = http.post("/matrices", files={"file": ("m.npy", matrix), "col_labels": ("c.txt", b"a\n\xff\xfe\nc\n")})
    assert_clear_4xx(bad, 422, "col_labels", "UTF-8")


def test_unicode_names_round_trip(http) -> None:
    name = "матрица 🧮 \u202eevil\u0000 名前"
    response = http.post("/matrices", files={"file": ("données-😀.npy", _npy(np.ones((4, 3), dtype=np.float32)))},
                         data={"name": name})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == name
    assert http.delete(f"/matrices/{response.json()['id']}").status_code == 204
    missing = http.post("/matrices", json={"path": "nowhere/ファイル.npy", "format": "npy"})
    assert_clear_4xx(missing, 400, "ファイル.npy")


def test_huge_k_with_tiny_data(http) -> None:
    matrix = http.post("/matrices", files={"file": ("tiny.npy", _npy(np.ones((3, 2), dtype=np.float32)))}).json()
    for k, word in ((10**12, "max_components"), (40, "n_components must be in 1..2")):
        response = http.post("/jobs", json={"matrix_id": matrix["id"], "n_components": k})
        assert_clear_4xx(response, 422, word)
    assert http.delete(f"/matrices/{matrix['id']}").status_code == 204


def test_store_with_an_unsafe_codec_is_refused(service, http) -> None:
    """Zarr decodes numcodecs.zlib fine; distnmf refuses any codec outside its allow-list."""
    from distnmf.matrixwriter import save_matrix

    save_matrix(np.ones((4, 3), dtype=np.float32), service.data_dir / "odd.zarr")
    meta_path = service.data_dir / "odd.zarr" / "X" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"] = [meta["codecs"][0], {"name": "numcodecs.zlib", "configuration": {"level": 1}}]
    meta_path.write_text(json.dumps(meta))
    response = http.post("/matrices", json={"path": "odd.zarr", "format": "zarr"})
    assert_clear_4xx(response, 422, "odd.zarr/X", "numcodecs.zlib", "allowed")


def test_json_body_just_under_the_limit(service, http) -> None:
    """The largest accepted JSON body, made of the smallest numbers: what parsing it costs (the
    job does not exist, so the answer is 404 once the body is read and parsed)."""
    row = b"[" + b"0," * 999 + b"0]"
    count = (service_limit := 16 * MB - 100) // (len(row) + 1)
    body = b'{"rows": [' + b",".join([row] * count) + b"]}"
    assert len(body) <= service_limit
    with service.peak_growth() as peak:
        response = http.post("/jobs/none/transform", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 404, response.text[:300]
    print(f"peak growth {peak[0] / MB:.0f} MB for a {len(body) / MB:.0f} MB JSON body")
    assert peak[0] < PEAK_MB * MB, peak



# --------------------------------------------------------------------------- library: images, external TLS


def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring ``width`` x ``height`` in its header, with an empty image data chunk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    size = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", size) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


def test_images_only_through_allowed_decoders_and_sizes(tmp_path) -> None:
    from distnmf.ingest import ingest_images, load_image

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "huge.png").write_bytes(_png_header(9000, 9000))
    (folder / "script.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ValueError, match="pixels is more than"):
        load_image(folder / "huge.png")
    with pytest.raises(Exception, match="cannot identify image file"):
        load_image(folder / "script.eps")  # Pillow would hand EPS to Ghostscript
    from PIL import Image

    Image.new("L", (8, 8), 200).save(folder / "ok.png")
    report = ingest_images(folder, tmp_path / "images.zarr", image_shape=(4, 4), client=False)
    assert report.shape == (1, 16) and report.n_skipped == 2


def test_external_tls_scheduler_needs_the_configured_certificates(tmp_path) -> None:
    """DISTNMF_TLS_CA_FILE/_CERT/_KEY reach a TLS scheduler; without them the service cannot."""
    from distributed import LocalCluster
    from distributed.security import Security

    from distnmf_api.cluster import Cluster
    from distnmf_api.settings import Settings

    credentials = Security.temporary()  # one self-signed certificate: CA, scheduler, worker and client
    (tmp_path / "cert.pem").write_text(credentials.tls_ca_file)
    (tmp_path / "key.pem").write_text(credentials.tls_client_key)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, host="127.0.0.1",
                      dashboard_address=None, security=credentials) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        settings = Settings(data_dir=tmp_path / "data", scheduler=cluster.scheduler_address,
                            tls_ca_file=tmp_path / "cert.pem", tls_cert=tmp_path / "cert.pem",
                            tls_key=tmp_path / "key.pem")
        connected = Cluster(settings)
        try:
            assert connected.wait_until_ready(30) and connected.state.n_workers == 1
            with connected.connect() as client:
                assert client.submit(sum, [1, 2]).result() == 3
        finally:
            connected.close()
        without = Cluster(Settings(data_dir=tmp_path / "data", scheduler=cluster.scheduler_address))
        try:
            assert not without.wait_until_ready(3)
            assert without.state.problem == "no Dask scheduler reachable; jobs wait for it"
        finally:
            without.close()

def test_ratings_line_longer_than_the_limit(tmp_path) -> None:
    from distnmf.ingest import ingest_ratings
    from distnmf.ingest.limits import IngestLimits

    path = tmp_path / "ratings.csv"
    with open(path, "w") as f:
        f.write("user,item,rating\nu1,i1,4\n")
        f.write("u2,i2,5" + ",0" * (2 * MB) + "\n")  # many small fields: csv's field limit does not stop it
    with pytest.raises(ValueError, match=r"line 3: longer than max_line_bytes=1,048,576"):
        ingest_ratings(path, tmp_path / "r.zarr", limits=IngestLimits(max_line_bytes=MB))
    assert ingest_ratings(path, tmp_path / "r.zarr").shape == (2, 2)  # the library's default limit is 1 GiB
