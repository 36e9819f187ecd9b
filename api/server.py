"""``distnmf serve``: run the service with uvicorn."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from distnmf_api.main import create_app
from distnmf_api.settings import Settings

log = logging.getLogger("distnmf.api")

LOOPBACK = "127.0.0.1"


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


def serve(host: str, port: int) -> None:
    """Run the service on ``host:port`` until interrupted (settings from ``DISTNMF_*``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings()
    uvicorn.run(create_app(settings), host=bind_host(host, settings), port=port, log_level="info")


class BackgroundServer:
    """The service on a free loopback port, served by uvicorn in a background thread.

    Used by ``distnmf demo`` and the tests: ``start()`` returns the base URL once the app has
    started (cluster connected, jobs re-queued); ``stop()`` shuts it down cleanly.
    """

    def __init__(self, settings: Settings, port: int = 0) -> None:
        self.settings = settings
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

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
