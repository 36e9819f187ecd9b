"""``distnmf up``: the production topology on one machine, as separate processes.

One ``dask scheduler``, N ``dask worker`` processes (one thread each, with a memory limit) and
``distnmf serve`` pointed at the scheduler, all sharing one storage root (a folder, or an
object-store URL). It is what deploy/docker, deploy/kubernetes and deploy/slurm run, minus the
machines: the same commands and ``DISTNMF_*`` settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

READY_TIMEOUT = 120.0


@dataclass
class LocalDeployment:
    """Scheduler, workers and service as child processes of this one.

    ``start()`` returns once the service answers ``/api/v1/health`` with all workers
    connected; ``stop()`` terminates them (service first, scheduler last).
    """

    data_dir: Path
    n_workers: int = 2
    memory_limit: str = "2GiB"
    host: str = "127.0.0.1"
    scheduler_port: int = 8786
    dashboard_port: int = 8787
    service_port: int = 8000
    storage_root: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def scheduler_address(self) -> str:
        return f"tcp://{self.host}:{self.scheduler_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}/status"

    @property
    def service_url(self) -> str:
        return f"http://{self.host}:{self.service_port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with open(self.data_dir / "logs" / f"{name}.log", "ab") as log:  # the child keeps its own copy
            self.processes[name] = subprocess.Popen(  # noqa: S603 - our own dask and distnmf commands
                args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> Self:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        bin_dir = Path(sys.executable).parent
        try:
            self._spawn("scheduler", [str(bin_dir / "dask"), "scheduler", "--host", self.host,
                                      "--port", str(self.scheduler_port),
                                      "--dashboard-address", f"{self.host}:{self.dashboard_port}"], env)
            for i in range(self.n_workers):
                self._spawn(f"worker-{i}", [str(bin_dir / "dask"), "worker", self.scheduler_address,
                                            "--nthreads", "1", "--memory-limit", self.memory_limit,
                                            "--name", f"worker-{i}", "--host", self.host,
                                            "--local-directory", str(self.data_dir / "dask-scratch")], env)
            service_env = {**env, "DISTNMF_SCHEDULER": self.scheduler_address,
                           "DISTNMF_DATA_DIR": str(self.data_dir)}
            if self.storage_root:
                service_env["DISTNMF_STORAGE_ROOT"] = self.storage_root
            self._spawn("service", [str(bin_dir / "distnmf"), "serve", "--host", self.host,
                                    "--port", str(self.service_port)], service_env)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {process.returncode}; see "
                                       f"{self.data_dir / 'logs' / (name + '.log')}")
            try:
                health = httpx.get(f"{self.service_url}/api/v1/health", timeout=2).json()
                if health.get("n_workers") == self.n_workers:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
        raise TimeoutError(f"the service at {self.service_url} did not report {self.n_workers} workers "
                           f"within {READY_TIMEOUT:.0f} s; see {self.data_dir / 'logs'}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the service, the workers, then the scheduler (SIGKILL what outlives ``timeout``)."""
        order = ["service", *sorted(n for n in self.processes if n.startswith("worker-")), "scheduler"]
        for name in order:
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


    def wait(self) -> str:
        """Block until a process exits (or Ctrl-C); returns the name of the one that exited."""
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    return name
            time.sleep(0.5)
