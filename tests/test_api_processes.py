"""The whole flow against `dask scheduler` and two `dask worker` processes on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings
from distnmf.client import Client

DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def scheduler_and_workers(tmp_path) -> Iterator[str]:
    address = f"tcp://127.0.0.1:{free_port()}"
    processes = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                   "--dashboard-address", "127.0.0.1:0"], stderr=subprocess.DEVNULL)]
    try:
        for i in range(2):
            processes.append(subprocess.Popen(
                [DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                 "--dashboard-address", "127.0.0.1:0", "--local-directory", str(tmp_path / f"worker{i}"),
                 "--name", f"worker-{i}", "--no-nanny"], stderr=subprocess.DEVNULL))
        from distributed import Client as DaskClient

        with DaskClient(address, timeout=30) as dask_client:
            dask_client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def test_flow_on_separate_processes(scheduler_and_workers, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "data", scheduler=scheduler_and_workers)
    X = np.random.default_rng(3).random((500, 40), dtype=np.float32)
    with BackgroundServer(settings) as server, Client(server.url) as client:
        health = client.health()
        assert health["scheduler"] is None and health["n_workers"] == 2
        matrix = client.upload(X, name="random")
        job = client.submit(matrix, n_components=5, max_iter=30, random_state=0)
        info = job.wait(progress=False, timeout=120)
        assert info.status == "succeeded"
        W, H = job.W(), job.H()
        assert W.shape == (500, 5) and H.shape == (5, 40)
        assert np.linalg.norm(X - W @ H) / np.linalg.norm(X) == pytest.approx(info.error, rel=1e-2)
        assert len(job.similar(0, k=3)) == 3
