"""The job runner: fits queued jobs on the service's cluster (:mod:`distnmf_api.cluster`).

Jobs run in job threads (``max_concurrent_jobs`` of them); SQLite is the queue, and each
thread claims the oldest queued job once the cluster has a scheduler and a worker. A job has
its own ``distributed.Client``: closing it frees everything the job left on the cluster and
interrupts the fit wherever it is (initialisation, iterations, the final write), which is how
cancel and shutdown stop a job at once. Lost workers are the fit's own business (the driver
redoes the iterations since its last checkpoint); a running job whose fit the cluster ends
(scheduler lost or restarted, no worker left) is re-queued and resumes from its last
checkpoint. A supervisor re-queues jobs recorded ``running`` that no thread runs, and
replaces dead threads. Rank-selection jobs (kind "rank") run :func:`distnmf.select_rank` the
same way; they have no checkpoint, so an interrupted one runs all its fits again. A job whose
fit fits one worker runs as one task there (:mod:`distnmf.one_task`); it is cancelled by
cancelling that task, which stops after its current iteration.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distnmf import storage
from distnmf.dask_context import client_of_this_thread, cluster_summary
from distnmf.wire import JobRecord, JobStatus
from distnmf_api.cluster import Cluster
from distnmf_api.errors import ClusterUnavailable
from distnmf_api.jobstore import JobStore
from distnmf_api.settings import Settings

log = logging.getLogger("distnmf.api")

SUPERVISE_EVERY = 2.0  # seconds between checks for orphaned jobs and dead job threads
RETRY_EVERY = 1.0  # seconds between attempts to record a job's end while SQLite is locked


@dataclass
class _Running:
    """A job a thread of this process runs: its Dask client once connected, and whether it was cancelled."""

    client: Any = None
    scheduler_id: str | None = None
    cancelled: bool = False
    whole_fit: Any = None  # the future of a fit run as one task (cancelling it stops the fit)


class _Interrupted(Exception):
    """The job was cancelled, or the service is stopping, before its fit began."""


class JobRunner:
    """Runs queued jobs on the cluster, a few at a time, and records their progress."""

    def __init__(self, settings: Settings, store: JobStore, cluster: Cluster) -> None:
        self.settings = settings
        self.store = store
        self.cluster = cluster
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()  # guards _running, and claiming (so the supervisor sees claims whole)
        self._pending = threading.Event()  # set when a job may be waiting
        self._stopping = threading.Event()
        self._threads = [self._job_thread(i) for i in range(settings.max_concurrent_jobs)]
        self._supervisor = threading.Thread(target=self._supervise, name="distnmf-job-supervisor", daemon=True)

    # -- life cycle
    def start(self) -> None:
        """Re-queue the jobs a previous run left running, then start the threads."""
        self._requeue_orphans()
        for thread in [*self._threads, self._supervisor]:
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the threads; running jobs are interrupted now and re-queued."""
        self._stopping.set()
        self._pending.set()
        with self._lock:
            clients = [job.client for job in self._running.values() if job.client is not None]
        for client in clients:
            client.close()
        for thread in [*self._threads, self._supervisor]:
            thread.join(timeout)

    def submit(self, job_id: str) -> None:
        """Wake a job thread: ``job_id`` was just queued in the store."""
        self._pending.set()

    def cancel(self, job_id: str) -> None:
        """Cancel a queued job, or interrupt a running one wherever it is."""
        if self.store.cancel_queued(job_id):
            return
        with self._lock:
            job = self._running.get(job_id)
            if job is None:
                return
            job.cancelled = True
            client, whole_fit = job.client, job.whole_fit
        if whole_fit is not None:
            whole_fit.cancel()  # the task stops after its current iteration, and the job thread waits for that
        elif client is not None:
            client.close()  # the fit raises at once, in whichever cluster call it waits

    # -- job threads
    def _job_thread(self, i: int) -> threading.Thread:
        return threading.Thread(target=self._work, name=f"distnmf-job-{i}", daemon=True)

    def _work(self) -> None:
        while not self._stopping.is_set():
            if not self.cluster.wait_until_ready(timeout=1.0):
                continue
            try:
                job = self._claim()
            except sqlite3.Error as exc:
                log.warning("could not read the job queue (%s); retrying", exc)
                self._stopping.wait(RETRY_EVERY)
                continue
            if job is None:
                self._pending.wait(1.0)
                self._pending.clear()
                continue
            try:
                self._run(job)
            except Exception:  # _run records the job's end; this guards the thread itself
                log.exception("job runner error on job %s", job.id)
            finally:
                with self._lock:
                    self._running.pop(job.id, None)

    def _claim(self) -> JobRecord | None:
        with self._lock:
            job = self.store.claim_next()
            if job is not None:
                self._running[job.id] = _Running()
        return job

    def _run(self, job: JobRecord) -> None:
        job_id, running = job.id, self._running[job.id]
        try:
            status, message = self._attempt(job, running)
        except Exception as exc:
            status, message = JobStatus.failed, f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", job_id)
        self._record_end(job_id, status, message and self.settings.layout.redact(message))  # no server paths
        if status != JobStatus.queued:
            storage.remove(self.settings.layout.checkpoint(job_id))
        if status == JobStatus.cancelled:
            for output in (self.settings.layout.factors(job_id), self.settings.layout.rank_report(job_id),
                           self.settings.layout.rank_plot(job_id)):
                storage.remove(output)

    def _attempt(self, job: JobRecord, running: _Running) -> tuple[JobStatus, str | None]:
        """Fit the job; the status to record and why (queued: it resumes later)."""
        job_id = job.id
        matrix = self.store.get_matrix(job.matrix_id)
        if matrix is None:
            return JobStatus.failed, f"matrix {job.matrix_id} was deleted"
        checkpoint = self.settings.layout.checkpoint(job_id)
        resume = checkpoint if storage.exists(checkpoint) else None
        history: list[float] = list(job.error_history) if resume else []
        if resume is None:
            self._record_progress(job_id, 0, None, history)
        log.info("job %s started%s", job_id, f" (resuming from {checkpoint})" if resume else "")

        def callback(iteration: int, error: float, elapsed: float) -> None:
            del history[max(0, iteration - 1):]
            history.append(float(error))
            self._record_progress(job_id, iteration, float(error), history)

        source = self.settings.layout.path(matrix.path)
        timings: dict[str, float] | None = None
        try:
            if job.params.get("kind") == "rank":
                self._select_rank(source, job_id, running, dict(job.params))
            else:
                timings, stored_history = self._fit(job_id, source, self.settings.layout.factors(job_id), running,
                                                    callback, dict(job.params), checkpoint, resume)
                # the stored factors hold the whole history, whatever progress reports were lost on
                # the way (a one-task fit's last events, a locked database)
                history[:] = stored_history
        except Exception as exc:
            return self._interrupted(job_id, running, exc)  # looks at the cluster through the job's client
        finally:
            if running.client is not None:
                running.client.close()
        if running.cancelled:  # the cancel came after the last cluster call of the final write
            return JobStatus.cancelled, "cancelled while running"
        if history:  # the last progress record may have failed (best effort); the end's may not
            self._persist(job_id, "record its last iteration",
                          lambda: self.store.record_progress(job_id, len(history), history[-1], history))
        if timings is not None:
            self._persist(job_id, "record its timings", lambda: self.store.record_timings(job_id, timings))
        log.info("job %s succeeded", job_id)
        return JobStatus.succeeded, None

    def _connect(self, running: _Running) -> Any:
        """Connect the job's client (``running.client``; the caller closes it) and note the
        scheduler it found; :class:`_Interrupted` if the job was cancelled meanwhile."""
        try:
            client = self.cluster.connect()
        except OSError as exc:
            log.warning("could not connect to the Dask scheduler at %s: %s", self.cluster.address, exc)
            raise ClusterUnavailable(f"could not connect to the Dask scheduler ({type(exc).__name__})") from exc
        with self._lock:
            running.client = client
        if running.cancelled or self._stopping.is_set():
            raise _Interrupted
        running.scheduler_id = cluster_summary(client)[0]
        return client

    def _fit(self, job_id: str, source: storage.Location, out: storage.Location, running: _Running, callback: Any,
             params: dict[str, Any], checkpoint: storage.Location, resume: storage.Location | None
             ) -> tuple[dict[str, float], list[float]]:
        """Fit on the job's client, and build the similarity index so that the factors are served
        from the start; seconds per phase and the stored error history. A fit that fits one worker
        runs as one task there (:mod:`distnmf.one_task`), a larger one block-parallel across the cluster."""
        from distnmf import factorize, open_factors, open_matrix
        from distnmf.dask_context import cluster_capacity
        from distnmf.index import build_for
        from distnmf.one_task import factorize_as_one_task, fits_one_task

        storage.remove(out)  # a half-recorded earlier run of this job
        client = self._connect(running)
        matrix = open_matrix(source)
        k = params.get("n_components")
        k = matrix.shape[1] if k in (None, "auto") else int(k)
        mode = self.settings.one_task_fits
        if mode != "never" and fits_one_task(matrix, k, cluster_capacity(client), any_work=mode == "always"):
            def submitted(future: Any) -> None:
                with self._lock:
                    running.whole_fit = future
                if running.cancelled:  # cancelled while the task was being submitted
                    future.cancel()

            timings = factorize_as_one_task(client, source, out, checkpoint=checkpoint, callback=callback,
                                            name=f"nmf-fit-job-{job_id}", on_submit=submitted, **params)
            factors = open_factors(out)
        else:
            with client_of_this_thread(client):
                factors = factorize(source, out, callback=callback, checkpoint=checkpoint, resume=resume, **params)
            timings = factors.attrs.get("timings", {})
        indexing = time.perf_counter()
        build_for(factors, "rows", approximate_from=self.settings.approximate_from_rows)
        return {**timings, "indexing": time.perf_counter() - indexing}, factors.error_history

    def _select_rank(self, source: storage.Location, job_id: str, running: _Running, params: dict[str, Any]) -> None:
        """Cross-validate the ranks ``params["ks"]`` on the job's client (all fits run again after
        an interruption: there is no checkpoint); write the report's plot, then its JSON."""
        from distnmf import select_rank

        layout = self.settings.layout
        ks, test_fraction, replicates = params.pop("ks"), params.pop("test_fraction"), params.pop("replicates")
        del params["kind"]
        client = self._connect(running)
        with client_of_this_thread(client):
            report = select_rank(source, ks, test_fraction=test_fraction, replicates=replicates, client=client,
                                 **params)
        report.plot(layout.rank_plot(job_id))
        with storage.atomic_path(layout.rank_report(job_id), overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(report.to_dict()))

    def _interrupted(self, job_id: str, running: _Running, exc: Exception) -> tuple[JobStatus, str]:
        """Tell a cancel, a shutdown or a lost cluster (the job is re-queued) from a failing job."""
        if running.cancelled:
            log.info("job %s cancelled", job_id)
            return JobStatus.cancelled, "cancelled while running"
        if self._stopping.is_set():
            log.info("job %s interrupted by shutdown; it resumes on the next start", job_id)
            return JobStatus.queued, "interrupted by a service shutdown; resumes from its last checkpoint"
        lost = str(exc) if isinstance(exc, ClusterUnavailable) else self._cluster_lost(running)
        if lost:
            log.warning("job %s interrupted: %s; re-queued (%s: %s)", job_id, lost, type(exc).__name__, exc)
            return JobStatus.queued, f"interrupted: {lost}; resumes from its last checkpoint when the cluster is back"
        log.warning("job %s failed: %s", job_id, exc)
        return JobStatus.failed, f"{type(exc).__name__}: {exc}"

    def _cluster_lost(self, running: _Running) -> str | None:
        """What happened to the cluster under a failed fit, or None if it is as the fit found it."""
        state = self.cluster.refresh()  # publish it now, so that no job thread claims a job meanwhile
        if state.scheduler_id is None or state.n_workers == 0:
            return state.problem
        if running.client is None:  # it failed before reaching the cluster
            return None
        if running.client.status != "running":
            return "the connection to the Dask scheduler was lost"
        if state.scheduler_id != running.scheduler_id:
            return "the Dask scheduler was restarted"
        return None

    # -- recording, whatever SQLite says
    def _record_progress(self, job_id: str, iteration: int, error: float | None, history: list[float]) -> None:
        """Progress is best effort: a record that fails is carried by the next (it holds the whole history)."""
        try:
            self.store.record_progress(job_id, iteration, error, history)
        except sqlite3.Error as exc:
            log.warning("job %s: progress of iteration %d not recorded (%s)", job_id, iteration, exc)

    def _record_end(self, job_id: str, status: JobStatus, message: str | None) -> None:
        """Record how the job ended, retrying while SQLite refuses; on shutdown the job stays
        ``running`` in the store, and the next start re-queues it."""
        if status == JobStatus.queued:
            self._persist(job_id, f"record it {status}", lambda: self.store.requeue(job_id, message))
        else:
            self._persist(job_id, f"record it {status}", lambda: self.store.finish_job(job_id, status, message))

    def _persist(self, job_id: str, what: str, write: Callable[[], Any]) -> None:
        """``write()`` to the store, retrying while SQLite refuses, until the service stops."""
        while True:
            try:
                write()
                return
            except sqlite3.Error as exc:
                if self._stopping.is_set():
                    log.error("job %s: could not %s (%s); the next start re-queues it", job_id, what, exc)
                    return
                log.warning("job %s: could not %s yet (%s); retrying", job_id, what, exc)
                self._stopping.wait(RETRY_EVERY)

    # -- supervision
    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_EVERY):
            for i, thread in enumerate(self._threads):
                if not thread.is_alive():
                    log.error("job thread %s died; starting a new one", thread.name)
                    self._threads[i] = self._job_thread(i)
                    self._threads[i].start()
            self._requeue_orphans()

    def _requeue_orphans(self) -> None:
        """Re-queue jobs recorded ``running`` that no thread of this service runs (a previous
        run of the service, or a thread that died before recording the job's end)."""
        try:
            recorded = self.store.list_jobs(JobStatus.running)
            cancelling = self.store.list_jobs(JobStatus.cancelling)
            with self._lock:
                orphans = [job.id for job in recorded if job.id not in self._running]
                stopped = [job.id for job in cancelling if job.id not in self._running]
            for job_id in stopped:  # a cancel the service did not see to its end
                self.store.finish_job(job_id, JobStatus.cancelled, "cancelled while running")
            for job_id in orphans:
                if self.store.requeue(job_id, "re-queued: it was running with nothing behind it (service "
                                              "restart or a lost job thread); resumes from its last checkpoint"):
                    log.warning("re-queued job %s: it was recorded running but nothing ran it", job_id)
                    self._pending.set()
        except sqlite3.Error as exc:
            log.warning("could not check for orphaned jobs (%s); trying again later", exc)
