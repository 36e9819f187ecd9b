"""Peak memory the service process takes for the hostile requests of issue #10.

Starts ``distnmf serve`` (defaults: no token, loopback, embedded LocalCluster with one worker) from
this checkout, or from another source tree given with ``--source`` (e.g. an older commit unpacked
with ``git archive``), sends each request once and prints the answer and the growth of the
service process's resident memory, sampled every few milliseconds while the request runs.

    .venv/bin/python bench/hostile_memory.py [--source /tmp/old-tree]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil

MB = 2**20


def zeros_npz(path: Path, shape: tuple[int, int]) -> None:
    """A compressed .npz of float32 zeros, written a row block at a time."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            for start in range(0, shape[0], 100):
                member.write(bytes(shape[1] * 4) * min(100, shape[0] - start))


def chunks(total: int, piece: bytes) -> Iterator[bytes]:
    for _ in range(total // len(piece)):
        yield piece


def start(data_dir: Path, source: Path | None, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {**os.environ, "DISTNMF_DATA_DIR": str(data_dir), "DISTNMF_N_WORKERS": "1", **env}
    if source is not None:  # the service package is installed as distnmf_api from the source's api/
        shim = data_dir.parent / "shim"
        shim.mkdir(exist_ok=True)
        (shim / "distnmf_api").symlink_to(source / "api")
        environ["PYTHONPATH"] = f"{shim}{os.pathsep}{source}"
    process = subprocess.Popen([sys.executable, "-c", f"from distnmf_api.server import serve; serve('127.0.0.1', {port})"],
                               env=environ, cwd=data_dir.parent, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # cwd: not this checkout, which 'python -c' would import
    url = f"http://127.0.0.1:{port}/api/v1"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the service did not start")


def measure(pid: int, send) -> tuple[httpx.Response | str, float, float]:
    """(response, peak RSS growth in MB, seconds) of ``send()``."""
    ps = psutil.Process(pid)
    base = peak = ps.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, ps.memory_info().rss)
            time.sleep(0.003)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        response = send()
    except httpx.HTTPError as exc:
        response = f"{type(exc).__name__}"
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return response, (peak - base) / MB, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="source tree of the service to measure (default: this one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bomb = tmp / "zeros.npz"
        zeros_npz(bomb, (5000, 50_000))
        mtx = tmp / "tall.mtx"
        mtx.write_text("%%MatrixMarket matrix coordinate real general\n50000000 10 0\n")
        boundary = "b0undary"
        multipart_head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
                          f"Content-Type: text/csv\r\n\r\n").encode()
        cases = {
            f"upload a {bomb.stat().st_size / MB:.1f} MB .npz of 5,000 x 50,000 float32 zeros":
                lambda c: c.post("/matrices", files={"file": ("zeros.npz", bomb.read_bytes())}),
            f"upload a {mtx.stat().st_size} byte .mtx declaring 50,000,000 rows, 0 entries":
                lambda c: c.post("/matrices", files={"file": ("tall.mtx", mtx.read_bytes())}),
            "POST /matrices with a 200 MB JSON body, chunked":
                lambda c: c.post("/matrices", headers={"Content-Type": "application/json"},
                                 content=iter([b'{"path": "', *chunks(200 * MB, b"a" * MB), b'"}'])),
            "POST /matrices with a 190 MB multipart upload, chunked (DISTNMF_MAX_UPLOAD_BYTES=1000000)":
                lambda c: c.post("/matrices", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                                 content=iter([multipart_head, *chunks(190 * MB, b"1,2\n" * (MB // 4)),
                                               f"\r\n--{boundary}--\r\n".encode()])),
        }
        process, url = start(tmp / "data", args.source.resolve() if args.source else None,
                             {"DISTNMF_MAX_UPLOAD_BYTES": "1000000"})
        try:
            baseline = psutil.Process(process.pid).memory_info().rss / MB
            print(f"service process resident memory after start: {baseline:.0f} MB")
            with httpx.Client(base_url=url, timeout=600) as client:
                for what, send in cases.items():
                    response, grown, seconds = measure(process.pid, lambda: send(client))
                    answer = response if isinstance(response, str) else response.status_code
                    print(f"{what}: {answer}, peak +{grown:.0f} MB, {seconds:.1f} s")
        finally:
            process.terminate()
            process.wait(60)


if __name__ == "__main__":
    main()
