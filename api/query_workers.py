"""Query worker processes: the hot read-only queries of finished jobs served on more than one core.

One service process (the primary: the job runner, the Dask cluster, every SQLite write) answers
queries on one core at most (Python's GIL). ``distnmf serve --query-workers N`` starts N more
processes beside it, each listening on the same public port (``SO_REUSEPORT``: the kernel spreads
incoming connections over the listening processes). A query worker answers itself what it can
answer from the persisted factors and similarity index — ``GET /jobs/{id}/similar``, ``POST
/jobs/{id}/transform`` and ``GET /jobs/{id}/components/{c}``, with the very route code the primary
runs, reading job records from the SQLite file read-only and the index memory-mapped (shared pages)
— and forwards every other request (and a query that needs the cluster: W beyond the index budget,
a large transform; or an index not built yet: the primary builds it once) to the primary over its
internal loopback listener
(:mod:`distnmf_api.forwarding`). The same guards (Host, Origin, body limits), token check and
problem+json errors apply in both processes. When the primary deletes a job, query workers drop
what they hold before answering again (:class:`distnmf_api.serving.Served`).

:class:`QueryWorkers` (in the primary) starts them, starts one again when it dies, and stops them
with the service; a worker also exits when the primary does, however it ends (its stdin is a
pipe from the primary: end of file means the primary is gone).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from threadpoolctl import threadpool_limits

from distnmf import __version__
from distnmf.index import IndexNotBuilt
from distnmf_api import errors, guards
from distnmf_api.deps import require_token
from distnmf_api.forwarding import Primary
from distnmf_api.jobstore import JobStore
from distnmf_api.routers import API_PREFIX, results
from distnmf_api.serving import Served, ready_to_serve
from distnmf_api.settings import Settings

log = logging.getLogger("distnmf.api")

HOT = {"GET": re.compile(r"/api/v1/jobs/[^/]+/(similar|components/[0-9]+)"),
       "POST": re.compile(r"/api/v1/jobs/[^/]+/transform")}  # answered by a query worker itself
BODY_KEY = "distnmf.body"  # where the scope of a query answered here keeps its body, to forward it if needed
WATCH_EVERY = 0.5  # seconds between looks at the query workers
STOP_TIMEOUT = 10.0  # seconds a query worker has to stop before it is killed
GRACEFUL_SHUTDOWN = 5  # seconds a stopping query worker lets open answers finish
RESTART_DELAYS = (0.0, 1.0, 5.0, 30.0)  # before starting a worker again, after 0, 1, 2, 3+ quick deaths in a row
QUICK_DEATH = 10.0  # seconds: a worker that lived less died quickly (a crash at start, not a one-off)


class NeedsPrimary(Exception):
    """A query needs the Dask cluster, which only the primary process has: it is forwarded there."""


class PrimaryOnly:
    """What a query worker's routes get as the cluster: reaching for its client forwards the query."""

    dashboard_url = None

    @property
    def client(self) -> None:
        raise NeedsPrimary


class ReadOnlyJobStore(JobStore):
    """The job store's reads on a read-only connection (no schema, no writer: writes fail)."""

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path = path
        self._reader = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout,
                                       check_same_thread=False, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        self._read_lock = threading.Lock()

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> int:
        raise PermissionError("a query worker does not write job records")

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()


class Dispatch:
    """Answer the hot queries (:data:`HOT`) with the app, forward everything else to the primary.

    A hot query's body is read first (under the body limit), so that a query that turns out to need
    the cluster (:class:`NeedsPrimary`) can still be forwarded whole."""

    def __init__(self, app: ASGIApp, primary: Primary, served: Served) -> None:
        self.app = app
        self.primary = primary
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            hot = HOT.get(scope["method"])
            if hot is None or not hot.fullmatch(scope["path"]):
                await self.primary.forward(scope, receive, tracked)
                return
            self.served.refresh()  # factors deleted by the primary are not served from what this process holds
            body = bytearray()
            while True:
                message = await receive()
                body += message.get("body", b"")
                if message["type"] != "http.request" or not message.get("more_body"):
                    break
            scope[BODY_KEY] = bytes(body)
            await self.app(scope, _replay(bytes(body), receive), tracked)
        except HTTPException as exc:  # a body over its limit, refused while it arrived
            if started:
                raise
            await errors.problem(Request(scope), exc.status_code, str(exc.detail))(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` giving ``body`` first, then what the connection gives (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class _ForwardWhole:
    """An answer that is the primary's answer to the request (its body already read here)."""

    def __init__(self, primary: Primary) -> None:
        self.primary = primary

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.primary.forward(scope, receive, send, body=scope.get(BODY_KEY, b""))


def create_worker_app(settings: Settings, primary: Primary) -> FastAPI:
    """A query worker's app: the results routes behind the service's guards, everything else forwarded."""
    store = ReadOnlyJobStore(settings.layout.sqlite)
    served = Served(settings.index_memory_bytes, settings.approximate_from_rows, settings.layout.served_generation,
                    build_approximate=False)  # the primary builds (and persists) faiss indexes, once

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        blas = threadpool_limits(limits=1, user_api="blas")  # queries run in parallel threads: one BLAS thread each
        await asyncio.to_thread(ready_to_serve)
        try:
            yield
        finally:
            blas.restore_original_limits()
            await primary.aclose()
            store.close()

    app = FastAPI(title="distnmf query worker", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.settings, app.state.store, app.state.cluster, app.state.served = settings, store, PrimaryOnly(), served
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(results.router, dependencies=[Depends(require_token)])
    app.include_router(api)

    async def forward_whole(request: Request, exc: Exception) -> _ForwardWhole:
        return _ForwardWhole(primary)

    for needs_primary in (NeedsPrimary, IndexNotBuilt):
        app.add_exception_handler(needs_primary, forward_whole)  # type: ignore[arg-type]  # an ASGI answer
    app.add_middleware(Dispatch, primary=primary, served=served)
    guards.install(app, settings)
    errors.install(app)
    return app


# --------------------------------------------------------------------------- the primary's side


class QueryWorkers:
    """``n`` query worker processes listening on ``host:port`` beside the primary, which they
    forward to at ``primary_url``; each one that dies is started again (after a pause when they
    keep dying at start). ``ssl_certfile``/``ssl_keyfile``: they serve HTTPS as the primary does;
    ``access_log``: they log a line per request."""

    def __init__(self, settings: Settings, n: int, host: str, port: int, primary_url: str,
                 ssl_certfile: Path | None = None, ssl_keyfile: Path | None = None, access_log: bool = False) -> None:
        self.settings, self.n = settings, n
        self.port = port
        self.restarts = 0
        self._command = [sys.executable, "-c", "from distnmf_api.query_workers import main; main()", "--host", host,
                         "--port", str(port), "--primary", primary_url]
        for option, path in (("--ssl-certfile", ssl_certfile), ("--ssl-keyfile", ssl_keyfile)):
            if path is not None:
                self._command += [option, str(path)]
        if not access_log:
            self._command.append("--no-access-log")
        self._processes: list[subprocess.Popen[bytes]] = []
        self._started_at: list[float] = []
        self._quick_deaths: list[int] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="distnmf-query-workers", daemon=True)

    @property
    def running(self) -> int:
        """How many query worker processes are alive."""
        with self._lock:
            return sum(process.poll() is None for process in self._processes)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [process.pid for process in self._processes]

    def start(self) -> None:
        with self._lock:
            for _ in range(self.n):
                self._processes.append(self._spawn())
                self._started_at.append(time.monotonic())
                self._quick_deaths.append(0)
        self._watcher.start()
        log.info("started %d query worker process(es) on port %d: %s", self.n, self.port, self.pids)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every query worker listens on the port (TimeoutError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while not all(_listens(pid, self.port) for pid in self.pids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the query workers {self.pids} do not all listen on port {self.port}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop every query worker: end of file on its stdin (it shuts down gracefully), killed if it
        has not stopped within :data:`STOP_TIMEOUT` seconds."""
        self._stopping.set()
        if self._watcher.is_alive():
            self._watcher.join()
        with self._lock:
            for process in self._processes:
                _close(process)
            deadline = time.monotonic() + STOP_TIMEOUT
            for process in self._processes:
                try:
                    process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("query worker %d did not stop within %.0f s: killing it", process.pid, STOP_TIMEOUT)
                    process.kill()
                    process.wait()
            self._processes.clear()

    def _spawn(self) -> subprocess.Popen[bytes]:
        environment = {name: value for name, value in os.environ.items() if not name.startswith("DISTNMF_")}
        environment |= self.settings.environment()
        return subprocess.Popen(self._command, env=environment, stdin=subprocess.PIPE)  # noqa: S603 - our own module

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_EVERY):
            with self._lock:
                for i, process in enumerate(self._processes):
                    if process.poll() is None:
                        continue
                    lived = time.monotonic() - self._started_at[i]
                    self._quick_deaths[i] = self._quick_deaths[i] + 1 if lived < QUICK_DEATH else 0
                    delay = RESTART_DELAYS[min(self._quick_deaths[i], len(RESTART_DELAYS) - 1)]
                    if lived < delay:
                        continue  # started again no sooner than `delay` seconds after its last start
                    log.warning("query worker %d exited with %s after %.0f s; starting another", process.pid,
                                process.returncode, lived)
                    _close(process)
                    self._processes[i] = self._spawn()
                    self._started_at[i] = time.monotonic()
                    self.restarts += 1


def _close(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None and not process.stdin.closed:
        try:
            process.stdin.close()
        except OSError:
            pass


def _listens(pid: int, port: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                   for c in psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.Error:
        return False


# --------------------------------------------------------------------------- a query worker process


def _stop_with_primary() -> None:
    """Block until the primary closes this process's stdin (or dies), then shut down gracefully."""
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    """Run one query worker (started by :class:`QueryWorkers`; settings from ``DISTNMF_*``)."""
    import uvicorn

    from distnmf_api.server import listening_socket

    parser = argparse.ArgumentParser(description="A distnmf query worker process (started by distnmf serve).")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--primary", required=True, help="URL of the primary process's internal listener")
    parser.add_argument("--ssl-certfile")
    parser.add_argument("--ssl-keyfile")
    parser.add_argument("--no-access-log", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded request
    settings = Settings()
    app = create_worker_app(settings, Primary(args.primary, verify=args.ssl_certfile is None))
    threading.Thread(target=_stop_with_primary, name="distnmf-stop-with-primary", daemon=True).start()
    config = uvicorn.Config(app, log_level="info", access_log=not args.no_access_log, lifespan="on",
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
                            ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    sock = listening_socket(args.host, args.port, shared=True)
    log.info("query worker %d listening on %s:%d", os.getpid(), args.host, args.port)
    uvicorn.Server(config).run(sockets=[sock])
