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
from distnmf_api.settings import LOOPBACK_HOSTS, Settings

log = logging.getLogger("distnmf.api")

LOOPBACK = "127.0.0.1"
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


def serve(host: str, port: int, ssl_keyfile: Path | None = None, ssl_certfile: Path | None = None) -> None:
    """Run the service on ``host:port`` until interrupted (settings from ``DISTNMF_*``); with
    ``ssl_certfile`` (and ``ssl_keyfile`` unless the certificate file holds the key), over HTTPS.

    Raises :class:`DataDirInUse` at once if another service holds the data directory.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings()
    host = bind_host(host, settings)
    settings = settings.model_copy(update={"allowed_hosts": allowed_hosts(host, settings)})
    if settings.api_token is not None and ssl_certfile is None:
        log.warning("the API token travels in clear text unless a TLS proxy is in front of the service; "
                    "or serve HTTPS directly with --ssl-certfile and --ssl-keyfile")
    with DataDirLock(settings.layout.lock):  # one service per data directory, for this process's life
        uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                    ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
                    ssl_certfile=str(ssl_certfile) if ssl_certfile else None)


class BackgroundServer:
    """The service on a free loopback port, served by uvicorn in a background thread.

    Used by ``distnmf demo`` and the tests: ``start()`` locks the data directory and returns the
    base URL once the app has started (cluster connected, jobs re-queued); ``stop()`` shuts it
    down cleanly and unlocks.
    """

    def __init__(self, settings: Settings, port: int = 0) -> None:
        self.settings = settings
        self._lock = DataDirLock(settings.layout.lock)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((LOOPBACK, port))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        config = uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
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
        self._socket.close()
        self._lock.release()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
