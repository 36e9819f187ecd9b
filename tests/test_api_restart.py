"""Records survive a restart: jobs left queued (or running) are re-queued and complete."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings
from distnmf.client import Client
from distnmf.factors import open_factors


@pytest.mark.parametrize(("one_task_fits", "max_iter"), [("never", 120), ("always", 4000)])
def test_queued_job_completes_after_restart(dask_cluster, tmp_path, one_task_fits, max_iter) -> None:
    """Block-parallel or as one task on a worker, a job running when the service stops is
    re-queued and resumes from its checkpoint; as one task, it needs many short iterations
    to be still running when the service stops."""
    settings = Settings(data_dir=tmp_path, scheduler=dask_cluster.scheduler_address, max_concurrent_jobs=1,
                        one_task_fits=one_task_fits)
    X = np.random.default_rng(0).random((400, 60), dtype=np.float32)
    with BackgroundServer(settings) as server, Client(server.url) as client:
        matrix = client.upload(X, name="random")
        first = client.submit(matrix, n_components=5, max_iter=max_iter, tol=0.0, random_state=0,
                              checkpoint_every=5)
        second = client.submit(matrix, n_components=3, max_iter=20, random_state=0)
        info = first.status()
        while info.iteration < 1:
            info = first.status(wait=5, after=info.iteration)
    with sqlite3.connect(tmp_path / "distnmf.sqlite") as db:
        statuses = dict(db.execute("SELECT id, status FROM jobs").fetchall())
    assert statuses == {first.id: "queued", second.id: "queued"}  # the running one was re-queued on stop

    with BackgroundServer(settings) as server, Client(server.url) as client:
        assert {j.id for j in client.jobs()} == {first.id, second.id}
        done_first = client.job(first.id).wait(progress=False, timeout=120)
        done_second = client.job(second.id).wait(progress=False, timeout=120)
    assert done_first.status == done_second.status == "succeeded"
    assert done_first.iteration == max_iter and len(done_first.error_history) == max_iter
    assert open_factors(tmp_path / "factors" / f"{first.id}.zarr").read_W().shape == (400, 5)
