"""Read throughput of one pass over a stored matrix: local disk vs an S3-protocol server (moto).

One dense float32 matrix is written twice with ``save_matrix`` (same chunks): to a local folder and
to ``s3://`` on a ``moto_server`` process on loopback. A pass is what a fit's iteration does when X
is not kept in memory: every row block read by a task on a worker process
(``LocalCluster(n_workers=2, threads_per_worker=1)``), nothing gathered. Passes alternate between
the two stores; the median of ``--repeats`` is reported, with the ratio, side by side.

    .venv/bin/python bench/storage_read.py --mib 256 --repeats 5

The local store is read from the page cache after the first pass (as a fit's later iterations
are), and moto keeps objects in its own process memory: the figure is the cost of the S3 protocol
path (HTTP requests, request signing, copies) on this machine, not of a network or of real disks.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_block_bytes(matrix, i: int) -> int:
    return int(matrix.read_rows(matrix.row_bounds[i], matrix.row_bounds[i + 1]).nbytes)


def one_pass(client, matrix) -> float:
    """Seconds for every block of ``matrix`` to be read by a task on a worker."""
    started = time.perf_counter()
    futures = client.map(read_block_bytes, [matrix] * matrix.n_blocks, range(matrix.n_blocks), pure=False)
    total = sum(client.gather(futures))
    elapsed = time.perf_counter() - started
    assert total == matrix.nbytes
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="Matrix size in MiB (float32, 2,048 columns).")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        import httpx

        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        from distributed import Client, LocalCluster

        from distnmf import storage
        from distnmf.matrixwriter import save_matrix

        storage.filesystem("s3://bench")[0].mkdir("bench")
        n_cols = 2048
        n_rows = args.mib * 2**20 // (4 * n_cols)
        X = np.random.default_rng(0).random((n_rows, n_cols), dtype=np.float32)
        with tempfile.TemporaryDirectory() as folder:
            local = save_matrix(X, Path(folder) / "X.zarr")
            remote = save_matrix(X, "s3://bench/X.zarr")
            del X
            load = [os.getloadavg()[0]]
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address=None) as cluster, Client(cluster) as client:
                times: dict[str, list[float]] = {"local": [], "s3": []}
                one_pass(client, local)  # warm-up: imports on the workers, the page cache
                one_pass(client, remote)
                for _ in range(args.repeats):
                    times["local"].append(one_pass(client, local))
                    times["s3"].append(one_pass(client, remote))
            load.append(os.getloadavg()[0])
        mib = local.nbytes / 2**20
        result = {name: {"median_s": statistics.median(t), "MiB_per_s": mib / statistics.median(t)}
                  for name, t in times.items()}
        result["s3_over_local_time"] = result["s3"]["median_s"] / result["local"]["median_s"]
        result.update(matrix=f"{local.shape[0]} x {local.shape[1]} float32, {mib:.0f} MiB, {local.n_blocks} blocks",
                      load_average_start_end=load, cpus=os.cpu_count())
        print(json.dumps(result, indent=2))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
