"""Python client for the distnmf service (``distnmf serve``).

One implementation, written async on httpx (:class:`AsyncClient`, :class:`AsyncJob`); the
synchronous :class:`Client` and :class:`Job` run it on a private event loop thread.

>>> from distnmf.client import Client                               # doctest: +SKIP
>>> with Client("http://127.0.0.1:8000") as client:
...     matrix = client.upload(X)                                   # numpy, scipy.sparse or a file
...     job = client.submit(matrix, n_components=10, random_state=0)
...     job.wait()                                                  # progress bar; raises JobFailed
...     W, H = job.W(), job.H()

HTTP errors become :class:`DistnmfError` subclasses carrying the server's message. Connection
errors and 5xx answers to idempotent calls (reads, cancel, and submit, which always sends a
``job_id``) are retried with exponential backoff.

Only httpx, numpy and tqdm are needed: no server or Dask packages.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from distnmf.async_client import AsyncClient, AsyncJob
from distnmf.client_errors import (
    BadRequest,
    Conflict,
    DistnmfError,
    InvalidRequest,
    JobCancelled,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
)

__all__ = ["AsyncClient", "AsyncJob", "BadRequest", "Client", "Conflict", "DistnmfError", "InvalidRequest", "Job",
           "JobCancelled", "JobFailed", "NotFound", "PayloadTooLarge", "ServerError", "ServiceUnavailable",
           "Unauthorized"]

T = TypeVar("T")


# --------------------------------------------------------------------------- sync face


class _Loop:
    """A private event loop on a daemon thread that runs the async implementation."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="distnmf-client", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait; an interrupt (Ctrl-C) cancels it there too."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # the pending request stops; the connection is closed
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _sync(name: str, owner: type) -> Callable[..., Any]:
    """A blocking method running ``owner.name`` on the client's loop (AsyncJob results become Job)."""
    async_method = getattr(owner, name)

    @functools.wraps(async_method)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = self._loop.run(async_method(self._impl, *args, **kwargs))
        return Job(self._loop, result) if isinstance(result, AsyncJob) else result

    return method


async def _next(agen: AsyncIterator[T]) -> T:
    return await anext(agen)


def _sync_iter(name: str, owner: type) -> Callable[..., Iterator[Any]]:
    """A blocking generator over the async generator ``owner.name``, run on the client's loop."""
    async_method = getattr(owner, name)

    @functools.wraps(async_method)
    def method(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        agen = async_method(self._impl, *args, **kwargs)
        try:
            while True:
                try:
                    yield self._loop.run(_next(agen))
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(agen.aclose())

    return method


class Client:
    """Synchronous client: the same methods as :class:`AsyncClient`, blocking."""

    def __init__(self, url: str, token: str | None = None, **options: Any) -> None:
        self._loop = _Loop()
        self._impl = self._loop.run(_make_async_client(url, token, options))
        self.url = self._impl.url

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._loop.run(self._impl.close())
        self._loop.stop()

    def job(self, job_id: str) -> Job:
        return Job(self._loop, self._impl.job(job_id))

    health = _sync("health", AsyncClient)
    upload = _sync("upload", AsyncClient)
    register = _sync("register", AsyncClient)
    matrices = _sync("matrices", AsyncClient)
    matrix = _sync("matrix", AsyncClient)
    delete_matrix = _sync("delete_matrix", AsyncClient)
    submit = _sync("submit", AsyncClient)
    select_rank = _sync("select_rank", AsyncClient)
    jobs = _sync("jobs", AsyncClient)
    version = _sync("version", AsyncClient)


async def _make_async_client(url: str, token: str | None, options: dict[str, Any]) -> AsyncClient:
    return AsyncClient(url, token, **options)


class Job:
    """Synchronous handle on a job: the same methods as :class:`AsyncJob`, blocking."""

    def __init__(self, loop: _Loop, impl: AsyncJob) -> None:
        self._loop = loop
        self._impl = impl
        self.id = impl.id

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    status = _sync("status", AsyncJob)
    events = _sync_iter("events", AsyncJob)
    wait = _sync("wait", AsyncJob)
    cancel = _sync("cancel", AsyncJob)
    delete = _sync("delete", AsyncJob)
    row_png = _sync("row_png", AsyncJob)
    W = _sync("W", AsyncJob)
    H = _sync("H", AsyncJob)
    top = _sync("top", AsyncJob)
    similar = _sync("similar", AsyncJob)
    recommend = _sync("recommend", AsyncJob)
    transform = _sync("transform", AsyncJob)
    component_png = _sync("component_png", AsyncJob)
    loss_png = _sync("loss_png", AsyncJob)
    rank = _sync("rank", AsyncJob)
    rank_png = _sync("rank_png", AsyncJob)
