"""Fits that survive the cluster: killed, memory-restarted and retired workers; all workers gone;
resume with the stopping rule's state. Real LocalClusters and `dask scheduler`/`dask worker`
processes on loopback; every check compares with an undisturbed fit of the same data."""

from __future__ import annotations

import logging
import os
import signal
import time

import numpy as np
import pytest
from sklearn.datasets import load_digits

import distnmf
from distnmf.runner import NoWorkersError


def digits_tiled(copies: int) -> np.ndarray:
    """scikit-learn's bundled digits (1,797 x 64 pixel counts), stacked ``copies`` times with a
    per-copy scale so the copies are not identical."""
    X = load_digits().data.astype(np.float32)
    return np.concatenate([X * (1 + 0.1 * c) for c in range(copies)])


def assert_same_fit(model: distnmf.NMF, reference: distnmf.NMF) -> None:
    assert model.n_iter_ == reference.n_iter_
    every = model.checkpoint_every  # a loss costs at most the iterations since the last checkpoint
    assert all(0 <= lost - resumed <= every for lost, resumed in getattr(model, "recoveries_", []))
    # two undisturbed fits on one cluster already differ in float32 rounding (measured: up to ~1e-6
    # of max|H| after 12 iterations); one iteration more or less moves H by ~3% of max|H| here
    np.testing.assert_allclose(model.components_, reference.components_, rtol=1e-4,
                               atol=1e-5 * float(reference.components_.max()))
    np.testing.assert_allclose(model.error_history_, reference.error_history_, rtol=1e-6)


def at_iteration(iteration: int, action):
    """A fit callback running ``action()`` once, right after ``iteration``."""
    def callback(i: int, error: float, elapsed: float) -> None:
        if i == iteration:
            action()
    return callback


FIT = {"n_components": 8, "init": "random", "tol": 0, "max_iter": 12, "random_state": 0, "checkpoint_every": 4}


@pytest.fixture(scope="module")
def nanny_cluster():
    """2 nanny-managed worker processes of 400 MB each: a killed worker is restarted."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", memory_limit="400MB")
    yield cluster
    cluster.close()


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_sigkill_of_a_worker_mid_fit_on_a_local_cluster(nanny_cluster, tmp_path):
    from distributed import Client

    X = digits_tiled(8)
    with Client(nanny_cluster) as client:
        reference = distnmf.NMF(**FIT).fit(X)
        victim = min(worker_pids(client).values())
        model = distnmf.NMF(callback=at_iteration(6, lambda: os.kill(victim, signal.SIGKILL)), **FIT).fit(X)
        client.wait_for_workers(2, timeout=60)
        assert victim not in worker_pids(client).values(), "the worker was not killed"
    assert_same_fit(model, reference)


async def _allocate_and_hold(nbytes: int) -> None:
    """Run on a worker: hold ``nbytes`` of touched memory, past the nanny's 95% limit (a
    coroutine, so ``client.run`` need not wait for a worker that is about to die)."""
    import builtins

    builtins._distnmf_ballast = np.ones(nbytes // 8)


def test_nanny_memory_restart_mid_fit(nanny_cluster, tmp_path):
    from distributed import Client

    X = digits_tiled(8)
    with Client(nanny_cluster) as client:
        reference = distnmf.NMF(**FIT).fit(X)
        pids = worker_pids(client)
        victim = min(pids)

        def overfill() -> None:
            client.run(_allocate_and_hold, 450_000_000, workers=[victim], wait=False)
            deadline = time.monotonic() + 30  # the nanny's memory monitor looks every 100 ms
            while time.monotonic() < deadline and pids[victim] in client.run(os.getpid).values():
                time.sleep(0.1)

        model = distnmf.NMF(callback=at_iteration(5, overfill), **FIT).fit(X)
        client.wait_for_workers(2, timeout=60)
        assert pids[victim] not in worker_pids(client).values(), "the nanny did not restart the worker"
    assert_same_fit(model, reference)


def test_killed_and_retired_workers_on_separate_processes(dask_processes, tmp_path):
    from distributed import Client

    store = distnmf.save_matrix(digits_tiled(6), tmp_path / "digits.zarr", chunk_rows=1024)
    dask_processes.start_scheduler()
    dask_processes.start_workers(3)
    dask_processes.wait_for_workers(3)
    with Client(dask_processes.address) as client:
        reference = distnmf.NMF(**FIT).fit(store.path)
        by_name = {info["name"]: address for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}

        def kill_then_retire(i: int, error: float, elapsed: float) -> None:
            if i == 3:
                dask_processes.kill_worker(0)
            if i == 7:
                client.retire_workers([by_name["worker-1"]])

        model = distnmf.NMF(callback=kill_then_retire, **FIT).fit(store.path)
        remaining = {info["name"] for info in client.scheduler_info(n_workers=-1)["workers"].values()}
    assert remaining == {"worker-2"}
    assert_same_fit(model, reference)


def test_all_workers_gone_fails_after_worker_timeout(dask_processes, tmp_path):
    from distributed import Client

    dask_processes.start_scheduler()
    dask_processes.start_workers(1)
    dask_processes.wait_for_workers(1)
    X = digits_tiled(2)
    with Client(dask_processes.address) as client:
        model = distnmf.NMF(callback=at_iteration(2, lambda: dask_processes.kill_worker(0)),
                            worker_timeout=3, **FIT)
        started = time.monotonic()
        with pytest.raises(NoWorkersError, match=r"has had no workers for 3 s \(worker_timeout\)"):
            model.fit(X)
        assert time.monotonic() - started < 60
        assert not client.scheduler_info(n_workers=-1)["workers"]


class StopAt(Exception):
    pass


@pytest.mark.parametrize("params", [
    {"solver": "hals"},
    {"solver": "mu", "beta_loss": "kullback-leibler"},
], ids=["hals", "mu-kl"])
def test_resume_equals_uninterrupted_with_tol(params, tmp_path):
    """The checkpoint carries the stopping rule's state, so a resumed fit stops where an
    uninterrupted one does, with the same error history."""
    X = digits_tiled(1)
    fit = dict(n_components=10, init="nndsvda", tol=1e-4, max_iter=400, random_state=0, **params)
    uninterrupted = distnmf.NMF(**fit).fit(X)
    assert 20 < uninterrupted.n_iter_ < 400, "the stopping rule must end the fit for this test to mean anything"
    stop = uninterrupted.n_iter_ // 2

    def interrupt(i: int, error: float, elapsed: float) -> None:
        if i == stop:
            raise StopAt

    checkpoint = tmp_path / "checkpoint.zarr"
    with pytest.raises(StopAt):
        distnmf.NMF(checkpoint=checkpoint, checkpoint_every=3, callback=interrupt, **fit).fit(X)
    resumed = distnmf.NMF(resume=checkpoint, **fit).fit(X)
    assert_same_fit(resumed, uninterrupted)


@pytest.mark.parametrize("delay", [0.0, 0.2])
def test_a_client_closed_mid_fit_stops_the_fit_instead_of_waiting_for_workers(nanny_cluster, delay, caplog):
    """How the service cancels a block-parallel fit: it closes the fit's client from another
    thread. Whatever call the fit is in, that is an abandoned fit, not a lost worker to wait for."""
    import threading

    from distributed import Client

    client = Client(nanny_cluster)
    closer = threading.Timer(delay, client.close)
    model = distnmf.NMF(callback=at_iteration(2, closer.start), worker_timeout=30,
                        **{**FIT, "max_iter": 400, "checkpoint_every": 1000})
    started = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING, logger="distnmf"), pytest.raises(Exception) as raised:
            model.fit(digits_tiled(8))
    finally:
        closer.join()
        client.close()
    assert not any("lost a worker" in record.getMessage() for record in caplog.records), caplog.text
    assert not isinstance(raised.value, (NoWorkersError, AttributeError)), repr(raised.value)
    assert time.monotonic() - started < 15
