"""The service survives its cluster and its own state: scheduler restarts, a second service
on the same data directory, a locked SQLite file, cancel during initialisation."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from conftest import free_port

from distnmf_api.server import BackgroundServer
from distnmf_api.settings import Settings
from distnmf import NMF
from distnmf.client import Client

DISTNMF = str(Path(sys.executable).with_name("distnmf"))


def poll(fetch: Callable[[], Any], until: Callable[[Any], bool], timeout: float, what: str) -> Any:
    """Call ``fetch`` every 0.2 s until ``until(value)``; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not until(value := fetch()):
        assert time.monotonic() < deadline, f"{what}: still {value!r} after {timeout} s"
        time.sleep(0.2)
    return value


def test_job_survives_worker_loss_and_a_scheduler_restart(dask_processes, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="distnmf.api")
    dask_processes.start_scheduler()
    dask_processes.start_workers(2)
    dask_processes.wait_for_workers(2)
    X = np.random.default_rng(7).random((3000, 120), dtype=np.float32)
    params = {"n_components": 6, "max_iter": 80, "tol": 0.0, "random_state": 0, "init": "random"}
    # block-parallel (this small job would run as one task, in well under a second)
    settings = Settings(data_dir=tmp_path / "data", scheduler=dask_processes.address, one_task_fits="never")
    with BackgroundServer(settings) as server, Client(server.url, retries=0) as client:
        matrix = client.upload(X, name="random")
        job = client.submit(matrix, checkpoint_every=5, **params)
        info = poll(job.status, lambda i: i.iteration >= 6 or i.status.is_terminal, 120, "job progress")
        assert info.status == "running", info

        dask_processes.kill_worker(0)  # SIGKILL one of the two workers mid-fit
        info = poll(job.status, lambda i: i.iteration >= 16 or i.status.is_terminal, 120, "job progress after a worker loss")
        assert info.status == "running", info

        dask_processes.kill_all()  # scheduler and workers, SIGKILL
        health = poll(client.health, lambda h: h["status"] == "degraded", 30, "health after the kill")
        assert "no Dask scheduler reachable" in health["problem"] and health["n_workers"] == 0
        queued = poll(job.status, lambda i: i.status != "running", 60, "job after the kill")
        assert queued.status == "queued" and "interrupted" in queued.message, queued

        dask_processes.start_scheduler()  # same address
        poll(client.health, lambda h: h["problem"] is not None and "no workers" in h["problem"], 120,
             "health with a scheduler but no worker")
        assert job.status().status == "queued"  # waits for a worker instead of failing
        dask_processes.start_workers(2)
        done = job.wait(progress=False, timeout=240)
        health = poll(client.health, lambda h: h["n_workers"] == 2, 60, "health after the restart")
    assert health["status"] == "ok" and health["problem"] is None
    assert done.status == "succeeded" and done.iteration == 80 and len(done.error_history) == 80
    assert any("resuming from" in r.getMessage() for r in caplog.records)
    reference = NMF(solver="hals", **params).fit(X)  # undisturbed, in process
    # the first error, from float32 Gram terms after a random start, depends on the row blocks by ~4e-4
    # (here X is two blocks, in the task's one-thread worker one; measured: 0.492791 vs 0.492576)
    np.testing.assert_allclose(done.error_history[0], reference.error_history_[0], rtol=1e-3)
    np.testing.assert_allclose(done.error_history[1:], reference.error_history_[1:], rtol=1e-4)


def test_small_job_runs_as_one_task_and_survives_losing_its_worker(dask_processes, tmp_path) -> None:
    """A job that fits one worker runs as one task there (the in-process engine): its progress is
    recorded; when its worker is killed the task runs again on the other one, from the checkpoint;
    a cancel stops the task and removes the checkpoint."""
    from distributed import Client as DaskClient

    dask_processes.start_scheduler()
    dask_processes.start_workers(2)
    dask_processes.wait_for_workers(2)
    X = np.random.default_rng(5).random((12_000, 300), dtype=np.float32)
    params = {"n_components": 10, "max_iter": 200, "tol": 0.0, "random_state": 0, "init": "random"}
    settings = Settings(data_dir=tmp_path / "data", scheduler=dask_processes.address)
    with (BackgroundServer(settings) as server, Client(server.url, retries=0) as client,
          DaskClient(dask_processes.address, set_as_default=False) as dask):
        def fit_tasks() -> dict[str, list[str]]:
            return {address: [key for key in keys if "nmf-fit-job-" in str(key)]
                    for address, keys in dask.processing().items() if keys}

        matrix = client.upload(X, name="random")
        job = client.submit(matrix, checkpoint_every=5, **params)
        info = poll(job.status, lambda i: i.iteration >= 11 or i.status.is_terminal, 120, "job progress")
        assert info.status == "running", info
        tasks = fit_tasks()
        assert len(tasks) == 1 and len(next(iter(tasks.values()))) == 1, tasks  # one task, on one worker
        name = dask.scheduler_info()["workers"][next(iter(tasks))]["name"]
        dask_processes.kill_worker(int(name.removeprefix("worker-")))  # SIGKILL the worker running the fit
        done = job.wait(progress=False, timeout=240)

        cancelled = client.submit(matrix, checkpoint_every=5, **{**params, "max_iter": 5000})
        poll(cancelled.status, lambda i: i.iteration >= 6, 120, "second job progress")
        cancelled.cancel()
        info = poll(cancelled.status, lambda i: i.status.is_terminal, 30, "job after cancel")
        assert info.status == "cancelled" and info.iteration < 5000, info
        poll(fit_tasks, lambda tasks: not tasks, 10, "the cancelled task on its worker")
    assert not settings.layout.checkpoint(cancelled.id).exists() and not settings.layout.factors(cancelled.id).exists()
    assert done.status == "succeeded" and done.iteration == 200 and len(done.error_history) == 200
    reference = NMF(solver="hals", **params).fit(X)  # undisturbed, in process
    # the first error, from float32 Gram terms after a random start, depends on the row blocks by ~4e-4
    # (here X is two blocks, in the task's one-thread worker one; measured: 0.492791 vs 0.492576)
    np.testing.assert_allclose(done.error_history[0], reference.error_history_[0], rtol=1e-3)
    np.testing.assert_allclose(done.error_history[1:], reference.error_history_[1:], rtol=1e-4)


def test_second_service_on_the_same_data_dir_is_refused(dask_cluster, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, scheduler=dask_cluster.scheduler_address)
    env = {**os.environ, "DISTNMF_DATA_DIR": str(tmp_path), "DISTNMF_SCHEDULER": dask_cluster.scheduler_address}
    with BackgroundServer(settings):
        second = subprocess.run([DISTNMF, "serve", "--port", str(free_port())], env=env, capture_output=True,
                                text=True, timeout=120, check=False)
    assert second.returncode == 1
    assert (f"error: the data directory {tmp_path} is in use by another distnmf service (process {os.getpid()}"
            in second.stderr), second.stderr
    assert "Traceback" not in second.stderr

    # a lock left by a process that died (SIGKILL) does not block the next service
    hold = ("import time; from pathlib import Path; from distnmf_api.lock import DataDirLock; "
            f"DataDirLock(Path({str(settings.layout.lock)!r})).acquire(); print('locked', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert settings.layout.lock.read_text().strip() == str(holder.pid)
    with BackgroundServer(settings) as server, Client(server.url) as client:
        assert client.health()["status"] == "ok"


def test_locked_database_does_not_wedge_jobs(dask_cluster, tmp_path) -> None:
    # block-parallel, so that the first job is still running while the database is locked
    settings = Settings(data_dir=tmp_path, scheduler=dask_cluster.scheduler_address, max_concurrent_jobs=1,
                        one_task_fits="never")
    X = np.random.default_rng(1).random((600, 50), dtype=np.float32)
    with BackgroundServer(settings) as server, Client(server.url) as client:
        matrix = client.upload(X, name="random")
        first = client.submit(matrix, n_components=4, max_iter=40, tol=0.0, random_state=0)
        second = client.submit(matrix, n_components=3, max_iter=10, tol=0.0, random_state=0)
        poll(first.status, lambda i: i.iteration >= 1, 120, "first job progress")

        other = sqlite3.connect(tmp_path / "distnmf.sqlite", isolation_level=None)
        try:
            # a job recorded running with nothing behind it, as a dead job thread leaves it
            other.execute("UPDATE jobs SET status = 'running' WHERE id = ?", (second.id,))
            other.execute("BEGIN EXCLUSIVE")  # and another process holding the write lock past the busy timeout
            locked_at = time.monotonic()
            while time.monotonic() - locked_at < 7:
                assert first.status().status in ("running", "queued")  # reads are answered meanwhile
                time.sleep(0.5)
            other.execute("ROLLBACK")
        finally:
            other.close()
        done_first = first.wait(progress=False, timeout=120)
        done_second = second.wait(progress=False, timeout=120)
    assert done_first.status == done_second.status == "succeeded"
    assert done_first.iteration == 40 and len(done_first.error_history) == 40
    assert done_second.iteration == 10 and len(done_second.error_history) == 10


def test_cancel_during_initialisation(dask_cluster, tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, scheduler=dask_cluster.scheduler_address)
    X = np.random.default_rng(2).random((40_000, 400), dtype=np.float32)
    with BackgroundServer(settings) as server, Client(server.url) as client:
        matrix = client.upload(X, name="random")
        job = client.submit(matrix, n_components=40, max_iter=5, init="nndsvda", random_state=0)
        poll(job.status, lambda i: i.status != "queued", 120, "job start")
        cancelled_at = time.monotonic()
        job.cancel()
        info = poll(job.status, lambda i: i.status.is_terminal, 30, "job after cancel")
        took = time.monotonic() - cancelled_at
    assert info.status == "cancelled" and info.iteration == 0, info  # stopped before its first iteration
    assert took < 10
    assert not settings.layout.factors(job.id).exists() and not settings.layout.checkpoint(job.id).exists()


def test_a_failing_job_fails_instead_of_waiting(dask_cluster, tmp_path) -> None:
    import zarr

    settings = Settings(data_dir=tmp_path, scheduler=dask_cluster.scheduler_address)
    zarr.open_group(settings.layout.checkpoint("bad-checkpoint"), mode="w")  # not a distnmf checkpoint
    X = np.random.default_rng(4).random((200, 30), dtype=np.float32)
    with BackgroundServer(settings) as server, Client(server.url) as client:
        job = client.submit(client.upload(X, name="random"), n_components=3, job_id="bad-checkpoint")
        info = poll(job.status, lambda i: i.status.is_terminal, 120, "job with a broken checkpoint")
    assert info.status == "failed" and "is not a distnmf checkpoint" in info.message, info
