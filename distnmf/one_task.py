"""A whole fit as one Dask task: the in-process engine inside one worker.

When X fits one worker, a block-parallel fit of a small matrix spends most of its time in
scheduler round trips (several per iteration, each block task taking milliseconds). Running
the whole of :func:`distnmf.factorize` as one task on one worker removes them, and keeps what
the block-parallel path guarantees:

- **progress**: after each iteration the task logs ``{"iteration", "error", "elapsed"}`` as a
  worker event on a topic the submitting client subscribes to (``Worker.log_event``);
- **cancel**: when nobody wants its result any more (the future cancelled, or its client
  gone) the worker marks the running task ``cancelled``; the next iteration's callback sees it
  and raises :class:`FitAbandoned`, and the task's last event says it ended;
- **checkpoints and lost workers**: the fit checkpoints every ``checkpoint_every`` iterations;
  when its worker is lost the scheduler runs the task again elsewhere, and it resumes from the
  checkpoint.
"""

from __future__ import annotations

import asyncio
import queue
import time
import uuid
from collections.abc import Callable
from typing import Any

from distributed import WorkerPlugin

from distnmf import storage
from distnmf.dask_context import Capacity, current_worker
from distnmf.runner import DaskRunner
from distnmf.store import Matrix

# Peak memory of an in-process fit = a fixed part + X_FACTOR x X's bytes + FACTORS_FACTOR x the
# bytes of W and H. Measured (``python bench/service.py --only memory``: peak RSS growth of a fit
# from a store, kernels compiled beforehand): dense 15,747 x 4,096 k=50 306 MiB for X 246 MiB
# (1.2x); sparse 20,000 x 800 k=10 110 MiB for X 6 MiB and W, H 1 MiB; sparse 75,000 x 73,890
# k=20 252-271 MiB for X 11 MiB and W, H 11 MiB (the randomized SVD's float64 panels and the
# iteration's k x n and m x k temporaries dominate). The rule overestimates all three.
FIXED_BYTES = 128 * 2**20
X_FACTOR = 1.5
FACTORS_FACTOR = 16.0
MAX_WORK = 2.5e8
"""Largest nnz(X) x k run as one task when the cluster has several threads. An iteration costs
about 4 nnz k flops: below this it takes tens of milliseconds on one thread, about what the
scheduler round trips it saves cost; above, spreading it over the workers can win. Measured with
``bench/service.py`` on 2 workers (2 cores): sparse 1.35 M non-zeros at k=20 (2.7e7) took 1.22 of
scikit-learn's time as one task against 2.57 block-parallel; dense 64.5 M values at k=50 (3.2e9)
0.36 against 0.38 run back to back, 0.51 against 0.23 in an earlier run measured minutes apart."""
ENDED_GRACE = 10.0  # seconds to wait for a cancelled task to say it stopped


class WarmEngine(WorkerPlugin):
    """Imports the engine and loads its compiled kernels in every worker, now and as workers join
    (measured ~2-4 s per worker here, numba's start-up ~1.5-2 s of it), so that the first fit on a
    worker does not pay for it."""

    name = "distnmf-warm-engine"
    idempotent = True

    async def setup(self, worker: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, _import_engine)


def _import_engine() -> None:
    import distnmf.estimator
    import distnmf.factors  # noqa: F401
    from distnmf import kernels

    kernels.load_compiled()


class FitAbandoned(RuntimeError):
    """The task's result is no longer wanted (cancelled, or its client disconnected)."""


def fit_memory(matrix: Matrix, k: int) -> int:
    """Bytes an in-process fit of ``matrix`` (m, n) at rank ``k`` needs at its peak (the measured
    rule above): X as float32 (CSR for sparse: 4-byte values and column indices, 8-byte row
    pointers), W (m, k) and H (k, n) as float32."""
    m, n = matrix.shape
    x_bytes = matrix.nnz * 8 + (m + 1) * 8 if matrix.is_sparse else m * n * 4
    return int(FIXED_BYTES + X_FACTOR * x_bytes + FACTORS_FACTOR * 4 * k * (m + n))


def fits_one_task(matrix: Matrix, k: int, capacity: Capacity, *, any_work: bool = False) -> bool:
    """Whether a fit of ``matrix`` at rank ``k`` should run as one task: it fits what one task may
    use on the tightest worker (``capacity.task_memory``: half its memory limit, less what it
    holds, per thread), and its work per iteration is at most :data:`MAX_WORK` unless the cluster
    has a single thread anyway (or ``any_work``)."""
    if capacity.workers == 0 or fit_memory(matrix, k) > capacity.task_memory:
        return False
    return any_work or capacity.threads <= 1 or matrix.nnz * k <= MAX_WORK


def factorize_task(source: storage.Location, out: storage.Location, checkpoint: storage.Location, topic: str,
                   params: dict[str, Any]) -> dict[str, float]:
    """Run on a worker: :func:`distnmf.factorize` of ``source`` into ``out`` in-process, resuming
    from ``checkpoint`` when an earlier run of this task left one; seconds per phase."""
    from distnmf.factors import factorize

    worker = current_worker()
    if worker is None:
        raise RuntimeError("factorize_task runs as a Dask task")
    key = worker.get_current_task()

    def report(iteration: int, error: float, elapsed: float) -> None:
        task = worker.state.tasks.get(key)
        if task is None or task.state not in ("executing", "long-running"):
            raise FitAbandoned(f"the fit {key} is no longer wanted (cancelled, or its client is gone)")
        worker.log_event(topic, {"iteration": int(iteration), "error": float(error), "elapsed": float(elapsed)})

    resume = checkpoint if storage.exists(checkpoint) else None
    try:
        factors = factorize(source, out, callback=report, checkpoint=checkpoint, resume=resume, **params)
    finally:
        worker.log_event(topic, {"ended": True})
    return dict(factors.attrs.get("timings", {}))


def factorize_as_one_task(client: Any, source: storage.Location, out: storage.Location, *,
                          checkpoint: storage.Location, callback: Callable[[int, float, float], None],
                          name: str, on_submit: Callable[[Any], None] | None = None,
                          **params: Any) -> dict[str, float]:
    """:func:`factorize_task` on ``client``'s cluster, as one task named ``name``;
    ``callback(iteration, relative_error, elapsed)`` runs here for each iteration the task
    reports, ``on_submit(future)`` once the task is submitted (cancel it to stop the fit).

    Returns the seconds per phase; raises what the task raised (``CancelledError`` once the
    future was cancelled and the task has stopped, or after :data:`ENDED_GRACE` seconds).
    """
    topic = f"distnmf-progress-{uuid.uuid4().hex[:12]}"
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    client.subscribe_topic(topic, lambda event: events.put(event[1]))
    try:
        future = DaskRunner(client).submit(name, factorize_task, source, out, checkpoint, topic, params)
        if on_submit is not None:
            on_submit(future)
        ended, done_at = False, None
        while not ended and client.status == "running":
            if future.done():
                done_at = done_at or time.monotonic()
                # a finished task's last events are already on their way; a cancelled one may
                # still be running until its next iteration
                grace = ENDED_GRACE if future.status == "cancelled" else 1.0
                if future.status not in ("finished", "cancelled") or time.monotonic() - done_at > grace:
                    break
            try:
                event = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event.get("ended"):
                ended = True
            elif "iteration" in event:
                callback(event["iteration"], event["error"], event["elapsed"])
        return future.result()
    finally:
        if client.status == "running":
            client.unsubscribe_topic(topic)
