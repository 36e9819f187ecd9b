"""Shared fixtures: a real 2-worker LocalCluster on loopback, and `dask scheduler` /
`dask worker` processes on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_under_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Temporary files of the code under test (e.g. the W store of an out-of-core fit without
    ``W_store``) go under pytest's base temporary directory, which pytest prunes, not /tmp."""
    scratch = tmp_path_factory.mktemp("tempfile")
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(scratch)
    os.environ["TMPDIR"] = str(scratch)
    yield
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[1]


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[object]:
    """A real ``distributed.LocalCluster``: 2 worker processes, 1 thread each, on 127.0.0.1."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", memory_limit="2GiB")
    yield cluster
    cluster.close()


@pytest.fixture
def dask_client(dask_cluster) -> Iterator[object]:
    """A ``distributed.Client`` on the shared cluster, set as the default scheduler for the test."""
    from distributed import Client

    with Client(dask_cluster, set_as_default=True) as client:
        yield client


DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaskProcesses:
    """A `dask scheduler` on a fixed free loopback port and `dask worker` processes (no nanny,
    one thread each); the scheduler can be killed and started again on the same address."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.directory = directory
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    def start_scheduler(self) -> None:
        self.scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                           "--dashboard-address", "127.0.0.1:0"], stderr=subprocess.DEVNULL)

    def start_workers(self, n: int) -> None:
        for _ in range(n):
            i = len(self.workers)
            self.workers.append(subprocess.Popen(
                [DASK, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                 "--dashboard-address", "127.0.0.1:0", "--local-directory", str(self.directory / f"worker{i}"),
                 "--name", f"worker-{i}", "--no-nanny"], stderr=subprocess.DEVNULL))

    def wait_for_workers(self, n: int, timeout: float = 120) -> None:
        from distributed import Client

        with Client(self.address, timeout=timeout) as client:
            client.wait_for_workers(n, timeout=timeout)

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker ``i``, as the kernel's OOM killer would."""
        _kill(self.workers[i])

    def kill_all(self) -> None:
        """SIGKILL the scheduler and every worker, as a crashed machine would."""
        for process in [self.scheduler, *self.workers]:
            _kill(process)

    def stop(self) -> None:
        """Stop the workers, then the scheduler (workers without one linger, trying to reconnect)."""
        for group in (self.workers, [self.scheduler]):
            for process in group:
                if process is not None and process.poll() is None:
                    process.terminate()
            for process in group:
                try:
                    if process is not None:
                        process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _kill(process)


def _kill(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()


@pytest.fixture
def dask_processes(tmp_path) -> Iterator[DaskProcesses]:
    """Nothing started yet; everything started is stopped at the end of the test."""
    processes = DaskProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.stop()


@pytest.fixture
def scheduler_and_workers(dask_processes) -> str:
    """The address of a `dask scheduler` with two `dask worker` processes connected."""
    dask_processes.start_scheduler()
    dask_processes.start_workers(2)
    dask_processes.wait_for_workers(2)
    return dask_processes.address
