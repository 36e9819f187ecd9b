"""``distnmf serve``: run the service with uvicorn."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn

from distnmf_api.lock import DataDirLock
from distnmf_api.main import create_app
from distnmf_api.query_workers import QueryWorkers
from distnmf_api.settings import LOOPBACK_HOSTS, Settings

log = logging.getLogger("distnmf.api")

LOOPBACK = "127.0.0.1"
BACKLOG = 2048  # pending connections per listening socket (uvicorn's default)
WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - the addresses refused without a token


def bind_host(host: str, settings: Settings) -> str:
    """The host to bind: without an API token, only the loopback interface."""
    if settings.api_token is None and host != LOOPBACK:
        log.warning("DISTNMF_API_TOKEN is not set: binding to %s instead of %s; set a token to serve "
                    "other machines", LOOPBACK, host)
        return LOOPBACK
    if settings.api_token is None:
        log.warning("DISTNMF_API_TOKEN is not set: the service is open to local users only (bound to %s)",
                    LOOPBACK)
    return host


def allowed_hosts(host: str, settings: Settings) -> list[str]:
    """The Host header values to accept: the configured ones plus the bound name (for a wildcard
    bind, this machine's names; clients using other names need DISTNMF_ALLOWED_HOSTS)."""
    if host in WILDCARDS:
        names = [socket.gethostname(), socket.getfqdn()]
        if not settings.allowed_hosts:
            log.warning("listening on all interfaces: requests must name this machine as %s or a loopback "
                        "address; set DISTNMF_ALLOWED_HOSTS to the names clients use", " or ".join(names))
    else:
        names = [host]
    return list(dict.fromkeys(settings.allowed_hosts + [n for n in names if n not in LOOPBACK_HOSTS]))


def listening_socket(host: str, port: int, shared: bool = False) -> socket.socket:
    """A TCP socket listening on ``host:port`` (0: a free port). ``shared``: with ``SO_REUSEPORT``,
    so that query worker processes of the same user listen on the same port, the kernel spreading
    incoming connections over them."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def claim_port(host: str, port: int) -> int:
    """``port`` (a free one for 0) after checking that no process listens on it: ``SO_REUSEPORT``
    alone would let a second service on the same port silently share its connections."""
    with listening_socket(host, port) as probe:
        return probe.getsockname()[1]


def serve(host: str, port: int, ssl_keyfile: Path | None = None, ssl_certfile: Path | None = None,
          query_workers: int | None = None, access_log: bool = True) -> None:
    """Run the service on ``host:port`` until interrupted (settings from ``DISTNMF_*``); with
    ``ssl_certfile`` (and ``ssl_keyfile`` unless the certificate file holds the key), over HTTPS;
    with ``query_workers`` (default: the query_workers setting) query processes beside this one
    (:mod:`distnmf_api.query_workers`); ``access_log``: a line per request (~10% of the throughput of
    fast queries).

    Raises :class:`DataDirInUse` at once if another service holds the data directory.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings()
    host = bind_host(host, settings)
    settings = settings.model_copy(update={"allowed_hosts": allowed_hosts(host, settings)})
    if query_workers is not None:
        settings = settings.model_copy(update={"query_workers": query_workers})
    if settings.api_token is not None and ssl_certfile is None:
        log.warning("the API token travels in clear text unless a TLS proxy is in front of the service; "
                    "or serve HTTPS directly with --ssl-certfile and --ssl-keyfile")
    with DataDirLock(settings.layout.lock):  # one service per data directory, for this process's life
        sockets, workers = service_sockets(settings, host, port, settings.query_worker_count(), ssl_certfile,
                                           ssl_keyfile, access_log)
        config = uvicorn.Config(create_app(settings, workers), log_level="info", access_log=access_log,
                                ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
                                ssl_certfile=str(ssl_certfile) if ssl_certfile else None)
        log.info("distnmf serving on %s://%s:%d", "https" if ssl_certfile else "http", host,
                 sockets[0].getsockname()[1])
        uvicorn.Server(config).run(sockets=sockets)


def service_sockets(settings: Settings, host: str, port: int, n: int, ssl_certfile: Path | None = None,
                    ssl_keyfile: Path | None = None,
                    access_log: bool = False) -> tuple[list[socket.socket], QueryWorkers | None]:
    """The primary's listening sockets and its ``n`` query workers (None for 0): the public socket
    on ``host:port``, shared with the query workers, and the internal loopback one they forward to."""
    public = listening_socket(host, claim_port(host, port), shared=n > 0)
    if n == 0:
        return [public], None
    internal = listening_socket(LOOPBACK, 0)
    scheme = "https" if ssl_certfile else "http"
    workers = QueryWorkers(settings, n, host, public.getsockname()[1],
                           f"{scheme}://{LOOPBACK}:{internal.getsockname()[1]}", ssl_certfile, ssl_keyfile,
                           access_log)
    return [public, internal], workers


class BackgroundServer:
    """The service on a free loopback port, served by uvicorn in a background thread.

    Used by ``distnmf demo`` and the tests (query workers only when ``settings.query_workers`` says
    so, not one per core as ``distnmf serve``): ``start()`` locks the data directory and returns the
    base URL once the app has started (cluster connected, jobs re-queued); ``stop()`` shuts it
    down cleanly and unlocks.
    """

    def __init__(self, settings: Settings, port: int = 0) -> None:
        self.settings = settings
        self._lock = DataDirLock(settings.layout.lock)
        self._sockets, self.query_workers = service_sockets(settings, LOOPBACK, port, settings.query_workers or 0)
        self.port = self._sockets[0].getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.app = create_app(settings, self.query_workers)
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": self._sockets},
                                        name="distnmf-service", daemon=True)

    def start(self, timeout: float = 120.0) -> str:
        """Lock the data directory (:class:`DataDirInUse` if another service has it) and serve."""
        self._lock.acquire()
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the distnmf service did not start on {self.url} (see the log above)")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join()
        for sock in self._sockets:
            sock.close()
        self._lock.release()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
