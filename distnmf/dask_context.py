"""The Dask context of the calling code: which client to use, which worker runs this task, and
what the cluster offers (the one reader of ``scheduler_info``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

TASK_MEMORY_FRACTION = 0.5  # of a worker's limit: Dask spills at 0.6 (target), pauses at 0.8; compiled
# kernels and freed-but-kept memory of earlier tasks (~60 MiB measured) need the rest
MIN_TASK_MEMORY = 16 * 2**20


def _task_memory(workers: Any) -> int:
    """Bytes one task may use on the tightest worker: what separates the process's memory now
    from half its limit, shared by the worker's threads. Measured when the fit starts, so
    what other jobs (or kept blocks) already hold is left to them; concurrent tasks on a worker
    are at most its threads, whichever job they belong to."""
    budgets = []
    for w in workers:
        limit = int(w.get("memory_limit") or 0) or available_memory()
        used = int(w.get("metrics", {}).get("memory") or 0)
        budgets.append((TASK_MEMORY_FRACTION * limit - used) / max(1, int(w.get("nthreads", 1))))
    return max(MIN_TASK_MEMORY, int(min(budgets)))


@contextmanager
def client_of_this_thread(client: Any) -> Iterator[None]:
    """Make ``client`` the current Dask client of this thread (or asyncio task) only.

    ``Client.as_current`` also sets dask's *global* config (``scheduler="dask.distributed"``) and
    restores it on exit, so concurrent threads race: one's exit can restore another's setting and
    leave it set for threads that have no client ("Requested dask.distributed scheduler but no
    Client active"). This sets only distributed's context variable, which ``dask.compute`` and
    ``distributed.wait`` consult through ``Client.current``.
    """
    from distributed.client import _current_client

    token = _current_client.set(client)
    try:
        yield
    finally:
        _current_client.reset(token)


def current_worker() -> Any | None:
    """The ``distributed.Worker`` running the calling task, or None outside of Dask tasks."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def active_client(client: Any = None) -> Any | None:
    """The client to use: ``client`` itself, else the current ``distributed.Client``, else None.

    ``client=False`` forces in-process work even when a client is active. Inside a Dask task
    (a whole fit run as one task, see :mod:`distnmf.one_task`) it is None too: a task runs its
    blocks in its own worker rather than submitting tasks and waiting for them.
    """
    if client is False:
        return None
    if client is not None:
        return client
    if "distributed" not in sys.modules:  # no client can exist; don't pay for the import
        return None
    if current_worker() is not None:
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


@dataclass(frozen=True)
class Capacity:
    """What a Dask cluster offers: worker processes, their threads, their memory limits (bytes, 0 if
    none), and the bytes one task may use now (:func:`_task_memory`)."""

    workers: int
    threads: int
    memory: int
    task_memory: int


def cluster_capacity(client: Any) -> Capacity:
    """The capacity of ``client``'s cluster, counting every worker (not only the first few)."""
    import inspect

    every = {"n_workers": -1} if "n_workers" in inspect.signature(client.scheduler_info).parameters else {}
    workers = client.scheduler_info(**every).get("workers", {}).values()
    return Capacity(workers=len(workers), threads=sum(int(w.get("nthreads", 1)) for w in workers),
                    memory=sum(int(w.get("memory_limit") or 0) for w in workers),
                    task_memory=_task_memory(workers) if workers else MIN_TASK_MEMORY)


def cluster_summary(client: Any) -> tuple[str, int]:
    """The scheduler's id (new after a restart) and its number of workers, without listing them."""
    info = client.scheduler_info(n_workers=0)
    return str(info["id"]), int(info["n_workers"])


def available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)
