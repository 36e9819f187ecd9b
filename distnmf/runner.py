"""Where block tasks run: in this process (a thread pool) or on a Dask cluster (futures).

Both runners implement :class:`Runner` over *handles* (values locally, futures on a cluster),
so the NMF iteration is written once in :mod:`distnmf.driver`.
"""

from __future__ import annotations

import operator
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from typing import Any, Protocol

from threadpoolctl import threadpool_limits

from distnmf.dask_context import (
    TASK_MEMORY_FRACTION,
    active_client,
    available_memory,
    client_of_this_thread,
    cluster_capacity,
    current_worker,
)
from distnmf.source import BlockSource, as_float32, materialize

Handle = Any
"""A block's value in this process, or a ``distributed.Future`` on a cluster."""
ClientArg = Any
"""A ``distributed.Client``, None (use the active one, if any) or False (in-process, always)."""


class Runner(Protocol):
    """The seam between the block algorithms and where their tasks run."""

    in_process: bool  # handles are plain values (no cluster, no dashboard span)
    n_workers: int  # worker threads: one block per thread in flight
    memory_limit: int  # bytes of memory across the workers
    task_memory: int  # bytes one block task may use (see DaskRunner)
    dashboard_link: str | None

    def load(self, source: BlockSource, keep: bool) -> list[Handle]:
        """One handle per row block of X: read and kept in memory, or re-read per use."""
        ...

    def map(self, name: str, fn: Callable[..., Any], *columns: Sequence[Any], shared: tuple[Any, ...] = ()
            ) -> list[Handle]:
        """``fn(col0[i], col1[i], ..., *shared)`` per block ``i``, as tasks named ``name``."""
        ...

    def imap(self, name: str, fn: Callable[..., Any], items: Iterable[Any], shared: tuple[Any, ...] = (),
             window: int | None = None) -> Iterator[Any]:
        """``fn(item, *shared)`` for each item, yielded in order as tasks named ``name``, with at most
        ``window`` (default: twice the threads) in flight, so results waiting to be used stay
        bounded. An error in a task is raised here and the tasks still pending are cancelled."""
        ...

    def select(self, handles: list[Handle], j: int, name: str = "select") -> list[Handle]:
        """Element ``j`` of each block's tuple result."""
        ...

    def reduce(self, handles: list[Handle], name: str = "reduce", part: int | None = None) -> Any:
        """The element-wise sum of all (tuple) results, or of their element ``part``, brought here."""
        ...

    def broadcast(self, value: Any) -> Handle:
        """``value`` made available to every task (e.g. H), recoverable if a worker is lost."""
        ...

    def gather(self, handles: list[Handle]) -> list[Any]:
        """The values of ``handles``, here."""
        ...

    def release(self, handles: Handle | list[Handle]) -> None:
        """Free what ``handles`` hold on the cluster."""
        ...

    def is_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means lost workers or results (recoverable) rather than a failing task."""
        ...

    def wait_for_workers(self) -> None:
        """Return once a worker is available; raise :class:`NoWorkersError` after a timeout."""
        ...

    def close(self) -> None:
        """Undo what the runner set up (thread pool, BLAS thread limits)."""
        ...


def add_terms(*terms: Any) -> Any:
    """Element-wise sum of tuples (or of plain arrays / floats)."""
    if isinstance(terms[0], tuple):
        return tuple(add_terms(*parts) for parts in zip(*terms))
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def add_parts(part: int, *results: tuple) -> Any:
    """Sum element ``part`` of several tuple results (the first level of a tree reduction)."""
    return add_terms(*(r[part] for r in results))


def _identity(value: Any) -> Any:
    return value


def load_block(x: Any) -> Any:
    """Read (or take) a block and convert it to float32 CSR / C-contiguous ndarray."""
    return as_float32(materialize(x))


class NoWorkersError(TimeoutError):
    """The cluster had no worker for longer than the runner's ``worker_timeout``."""


class LocalRunner:
    """Runs block tasks in a thread pool in this process (the embedded default)."""

    in_process = True

    @staticmethod
    def is_lost(exc: BaseException) -> bool:
        """Threads here are never lost: every exception is the task's own."""
        return False

    def __init__(self, n_threads: int | None = None) -> None:
        worker = current_worker()  # inside a Dask task: the worker's threads and memory limit are this fit's
        self.n_workers = n_threads or (worker.state.nthreads if worker else os.cpu_count()) or 1
        self._pool = ThreadPoolExecutor(self.n_workers, thread_name_prefix="distnmf")
        # one BLAS thread per pool thread: measured faster than fewer Python threads each
        # running multi-threaded BLAS, and no oversubscription
        self._blas_limits = threadpool_limits(1) if self.n_workers > 1 else None
        self.memory_limit = (worker and worker.memory_manager.memory_limit) or available_memory()
        self.task_memory = int(TASK_MEMORY_FRACTION * self.memory_limit / self.n_workers)
        self.dashboard_link: str | None = None

    def load(self, source: BlockSource, keep: bool) -> list[Any]:
        blocks = [source.block(i) for i in range(source.n_blocks)]
        return list(self._pool.map(load_block, blocks)) if keep else blocks

    def map(self, name: str, fn: Callable, *columns: Sequence[Any], shared: tuple = ()) -> list[Any]:
        if len(columns[0]) == 1:  # one block: no hand-off to a pool thread (~0.1 ms per call)
            return [fn(*(column[0] for column in columns), *shared)]
        return list(self._pool.map(lambda args: fn(*args, *shared), zip(*columns)))

    def imap(self, name: str, fn: Callable, items: Iterable[Any], shared: tuple = (),
             window: int | None = None) -> Iterator[Any]:
        yield from _windowed(lambda item: self._pool.submit(fn, item, *shared), items,
                             window or 2 * self.n_workers, lambda f: f.result(), lambda f: f.cancel())

    def select(self, handles: list[Any], j: int, name: str = "select") -> list[Any]:
        return [h[j] for h in handles]

    def reduce(self, handles: list[Any], name: str = "reduce", part: int | None = None) -> Any:
        values = handles if part is None else [h[part] for h in handles]
        return add_terms(*values)

    def broadcast(self, value: Any) -> Any:
        return value

    def gather(self, handles: list[Any]) -> list[Any]:
        return list(handles)

    def release(self, handles: Any) -> None:
        """Nothing to do: values are freed when dropped."""

    def wait_for_workers(self) -> None:
        """This process is the worker."""

    def close(self) -> None:
        self._pool.shutdown()
        if self._blas_limits is not None:
            self._blas_limits.restore_original_limits()


WORKER_TIMEOUT = 60.0
POLL_SECONDS = 1.0


class DaskRunner:
    """Runs block tasks on a ``distributed`` cluster; W blocks stay on their workers.

    Task keys are readable (``nmf-update-W``, ``nmf-reduce``, ...), suffixed with a run token,
    so the dashboard's task stream shows what runs. Whenever it waits for results and the
    cluster has no worker at all, it waits up to ``worker_timeout`` seconds for one to
    (re)join, then raises :class:`NoWorkersError`.
    """

    in_process = False

    def __init__(self, client: Any, run_name: str | None = None, *, worker_timeout: float = WORKER_TIMEOUT) -> None:
        from distributed import KilledWorker
        from distributed.comm import CommClosedError

        self.client = client
        self.worker_timeout = worker_timeout
        self._lost_types = (CancelledError, KilledWorker, CommClosedError)
        self.wait_for_workers()
        capacity = cluster_capacity(client)
        self.n_workers = capacity.threads
        self.memory_limit = capacity.memory or available_memory()
        self.task_memory = capacity.task_memory
        self.dashboard_link = client.dashboard_link
        self.token = run_name or uuid.uuid4().hex[:8]  # task keys read <name>-<token>
        self._calls = 0

    def _key(self, name: str, *index: int) -> tuple:
        return (f"{name}-{self.token}", self._calls, *index)

    def is_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means lost workers or results rather than a failing task: a cancelled
        future (``FutureCancelledError``: "lost dependencies", "already forgotten"), a task that
        killed its workers (``KilledWorker``), or a connection to a worker that is gone (a plain
        ``OSError``, not its file-related subclasses, which tasks raise themselves). Never once
        this runner's client is closing: its futures were cancelled because the fit was abandoned
        (the service cancels a job that way), and there is nothing to wait for."""
        if self.client.status in ("closing", "closed"):
            return False
        return isinstance(exc, self._lost_types) or type(exc) is OSError

    def load(self, source: BlockSource, keep: bool) -> list[Any]:
        blocks = [source.block(i) for i in range(source.n_blocks)]
        if not keep:
            return blocks
        self._calls += 1
        if source.array is not None:
            self.wait_for_workers()
            futures = self.client.scatter(blocks, hash=False)
            return [self.client.submit(load_block, f, key=self._key("nmf-load-X", i))
                    for i, f in enumerate(futures)]
        return [self.client.submit(load_block, b, key=self._key("nmf-load-X", i)) for i, b in enumerate(blocks)]

    def map(self, name: str, fn: Callable, *columns: Sequence[Any], shared: tuple = ()) -> list[Any]:
        self._calls += 1
        # retries: a task that fails (e.g. a transient storage error) runs once more
        return [self.client.submit(fn, *args, *shared, key=self._key(name, i), retries=1)
                for i, args in enumerate(zip(*columns))]

    def imap(self, name: str, fn: Callable, items: Iterable[Any], shared: tuple = (),
             window: int | None = None) -> Iterator[Any]:
        self._calls += 1
        shared_handles = [self.broadcast(value) for value in shared]
        index = iter(range(2**62))

        def submit(item: Any) -> Any:
            return self.client.submit(fn, item, *shared_handles, key=self._key(name, next(index)), pure=False)

        yield from _windowed(submit, items, window or 2 * self.n_workers, lambda f: f.result(), lambda f: f.cancel())

    def submit(self, name: str, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` as one task named ``name`` (e.g. a whole fit, :mod:`distnmf.one_task`): its future."""
        self._calls += 1
        return self.client.submit(fn, *args, key=self._key(name), pure=False)

    def select(self, handles: list[Any], j: int, name: str = "select") -> list[Any]:
        self._calls += 1
        return [self.client.submit(operator.getitem, h, j, key=self._key(name, i)) for i, h in enumerate(handles)]

    def reduce(self, handles: list[Any], name: str = "reduce", part: int | None = None) -> Any:
        """Tree-sum the handles on the cluster (fan-in 4) and bring the total here."""
        self._calls += 1
        level = 0
        current = handles
        if part is not None:  # the first level picks element `part` of each block's result
            level = 1
            current = [self.client.submit(add_parts, part, *handles[s:s + 4], key=self._key(name, level, s))
                       for s in range(0, len(handles), 4)]
        while len(current) > 1:
            level += 1
            current = [self.client.submit(add_terms, *current[s:s + 4], key=self._key(name, level, s))
                       for s in range(0, len(current), 4)]
        self._wait(current)
        return current[0].result()

    def broadcast(self, value: Any) -> Any:
        """``value`` as the result of a task that holds it: if the worker with it is lost, the
        scheduler recomputes it (scattered data would have no lineage)."""
        self._calls += 1
        return self.client.submit(_identity, value, key=self._key("nmf-value"), pure=False)

    def gather(self, handles: list[Any]) -> list[Any]:
        self._wait(handles)
        return self.client.gather(handles)

    def release(self, handles: Any) -> None:
        for h in handles if isinstance(handles, list) else [handles]:
            if hasattr(h, "release"):
                h.release()

    def wait_for_workers(self) -> None:
        """Return once the cluster has a worker; raise :class:`NoWorkersError` after ``worker_timeout``."""
        deadline = time.monotonic() + self.worker_timeout
        while not self._has_workers():
            if time.monotonic() > deadline:
                raise NoWorkersError(
                    f"the Dask cluster at {self.client.scheduler.address} has had no workers for "
                    f"{self.worker_timeout:g} s (worker_timeout); start workers, or raise worker_timeout")
            time.sleep(POLL_SECONDS)

    def _has_workers(self) -> bool:
        try:
            return bool(self.client.nthreads())
        except OSError:  # the scheduler itself is unreachable: no worker can be used either
            return False

    def _wait(self, futures: list[Any]) -> None:
        """Wait for ``futures``; while the cluster has no worker, at most ``worker_timeout``."""
        from distributed import wait

        while True:
            try:
                with client_of_this_thread(self.client):  # wait() uses the current client; this thread may have none
                    wait(futures, timeout=POLL_SECONDS * 5)
                return
            except TimeoutError:
                self.wait_for_workers()

    def close(self) -> None:
        """The client belongs to the caller; nothing to close."""


def _windowed(submit: Callable[[Any], Any], items: Iterable[Any], window: int, result: Callable[[Any], Any],
              cancel: Callable[[Any], Any]) -> Iterator[Any]:
    """Results of ``submit(item)`` in order, at most ``window`` submitted ahead; pending ones
    cancelled when the consumer stops or a result raises."""
    pending: deque[Any] = deque()
    try:
        for item in items:
            pending.append(submit(item))
            if len(pending) >= window:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())
    finally:
        for handle in pending:
            cancel(handle)


def make_runner(client: ClientArg = None, worker_timeout: float = WORKER_TIMEOUT) -> Runner:
    """A DaskRunner on ``client`` (None: the active client), else the in-process LocalRunner."""
    client = active_client(client)
    return DaskRunner(client, worker_timeout=worker_timeout) if client is not None else LocalRunner()
