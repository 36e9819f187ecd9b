"""The whole flow against `dask scheduler` and two `dask worker` processes on loopback."""

from __future__ import annotations

import numpy as np
import pytest

from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings
from distnmf.client import Client


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
