"""The job runner: takes queued jobs from the store and fits them on the Dask cluster.

Jobs run in worker threads (``max_concurrent_jobs`` of them), each with its own
``distributed.Client`` so that closing it frees everything the job left on the cluster.
The event loop never waits for a fit. Progress goes to the store after every iteration;
cancelling sets a flag that the fit's callback turns into an exception.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from pathlib import Path
from typing import Any

from distnmf_api.jobstore import JobStore
from distnmf_api.settings import Settings
from distnmf.runner import cluster_capacity
from distnmf.wire import JobStatus

log = logging.getLogger("distnmf.api")


class CancelRequested(Exception):
    """Raised inside a fit's callback when its job was cancelled."""


class ServiceStopping(Exception):
    """Raised inside a fit's callback when the service shuts down; the job is re-queued."""


class Cluster:
    """The Dask cluster jobs run on: ``DISTNMF_SCHEDULER``, or an embedded ``LocalCluster``.

    The embedded cluster talks TLS with certificates made for it in memory
    (``Security.temporary()``), so only this process and its workers can connect: no other
    local process can submit work. An external scheduler is reached with the TLS files of
    ``DISTNMF_TLS_CA_FILE``/``_CERT``/``_KEY``, else Dask's own ``distributed.comm.tls`` config.
    """

    def __init__(self, settings: Settings) -> None:
        from distributed import Client, LocalCluster

        self._local = None
        if settings.scheduler:
            self.address = settings.scheduler
            self.security = external_security(settings)
        else:
            self._local = LocalCluster(n_workers=settings.n_workers, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0", security=True)
            self.address = self._local.scheduler_address
            self.security = self._local.security
            log.info("started a LocalCluster at %s (TLS, temporary certificates)", self.address)
        self.client = Client(self.address, security=self.security, set_as_default=False)
        self.dashboard_url = self.client.dashboard_link

    def connect(self) -> Any:
        """A new ``distributed.Client`` on the cluster, with its credentials."""
        from distributed import Client

        return Client(self.address, security=self.security, set_as_default=False)

    def n_workers(self) -> int:
        return cluster_capacity(self.client).workers

    def close(self) -> None:
        self.client.close()
        if self._local is not None:
            self._local.close()


def external_security(settings: Settings) -> Any:
    """The ``distributed.security.Security`` for ``settings.scheduler``: the DISTNMF_TLS_* files
    when given (encryption then required), else whatever Dask's configuration says."""
    from distributed.security import Security

    if settings.tls_cert is None and settings.tls_ca_file is None:
        return Security()
    return Security(tls_ca_file=str(settings.tls_ca_file) if settings.tls_ca_file else None,
                    tls_client_cert=str(settings.tls_cert) if settings.tls_cert else None,
                    tls_client_key=str(settings.tls_key) if settings.tls_key else None, require_encryption=True)


class JobRunner:
    """Runs queued jobs on the cluster, a few at a time, and records their progress."""

    def __init__(self, settings: Settings, store: JobStore, cluster: Cluster) -> None:
        self.settings = settings
        self.store = store
        self.cluster = cluster
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"distnmf-job-{i}", daemon=True)
                         for i in range(settings.max_concurrent_jobs)]

    # -- life cycle
    def start(self) -> None:
        """Re-queue the jobs a previous run left queued or running, then start the workers."""
        for job in self.store.unfinished_jobs():
            if job.status == JobStatus.running:
                self.store.requeue(job.id)
            log.info("re-queued job %s left %s by the previous run", job.id, job.status)
            self._queue.put(job.id)
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers; running jobs are interrupted at their next iteration and re-queued."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> None:
        """Cancel a queued job now, or ask a running one to stop at its next iteration."""
        if self.store.cancel_queued(job_id):
            return
        flag = self._cancel.get(job_id)
        if flag is not None:
            flag.set()

    # -- work
    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            if self._stopping.is_set():
                return
            try:
                self._run(job_id)
            except Exception:  # the job is marked failed in _run; this guards the thread itself
                log.exception("job runner error on job %s", job_id)

    def _run(self, job_id: str) -> None:
        job = self.store.get_job(job_id)
        if job is None or job.status != JobStatus.queued:
            return
        matrix = self.store.get_matrix(job.matrix_id)
        if matrix is None:
            self.store.finish_job(job_id, JobStatus.failed, f"matrix {job.matrix_id} was deleted")
            return
        flag = self._cancel.setdefault(job_id, threading.Event())
        checkpoint = self.settings.layout.checkpoint(job_id)
        resume = checkpoint if checkpoint.exists() else None
        history: list[float] = list(job.error_history) if resume else []
        if not self.store.start_job(job_id):
            return
        log.info("job %s started%s", job_id, f" (resuming from {checkpoint})" if resume else "")

        def callback(iteration: int, error: float, elapsed: float) -> None:
            del history[max(0, iteration - 1):]
            history.append(float(error))
            self.store.record_progress(job_id, iteration, float(error), history)
            if flag.is_set():
                raise CancelRequested(job_id)
            if self._stopping.is_set():
                raise ServiceStopping(job_id)

        try:
            self._fit(self.settings.layout.path(matrix.path), self.settings.layout.factors(job_id), callback,
                      dict(job.params), checkpoint, resume)
        except CancelRequested:
            self.store.finish_job(job_id, JobStatus.cancelled, "cancelled while running")
            log.info("job %s cancelled", job_id)
        except ServiceStopping:
            self.store.requeue(job_id)
            log.info("job %s interrupted by shutdown; it resumes on the next start", job_id)
        except Exception as exc:
            self.store.finish_job(job_id, JobStatus.failed, f"{type(exc).__name__}: {exc}")
            log.warning("job %s failed: %s", job_id, exc)
        else:
            self.store.finish_job(job_id, JobStatus.succeeded)
            shutil.rmtree(checkpoint, ignore_errors=True)
            log.info("job %s succeeded", job_id)
        finally:
            self._cancel.pop(job_id, None)

    def _fit(self, source: Path, out: Path, callback: Any, params: dict[str, Any], checkpoint: Path,
             resume: Path | None) -> None:
        from distnmf import factorize
        from distnmf.index import build_for

        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out, ignore_errors=True)  # a half-recorded earlier run of this job
        with self.cluster.connect() as client, client.as_current():
            factors = factorize(source, out, callback=callback, checkpoint=checkpoint, resume=resume, **params)
        build_for(factors, "rows", approximate_from=self.settings.approximate_from_rows)  # served from the start
