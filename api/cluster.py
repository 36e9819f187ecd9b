"""The Dask cluster the service uses: ``DISTNMF_SCHEDULER`` or an embedded ``LocalCluster``.

A watcher thread looks at the scheduler every second: its state (reachable or not, how many
workers) is what ``/health`` reports and what job threads wait for. When the scheduler goes
away the watcher reconnects, to it or to a new scheduler at the same address; Dask keeps no
state across a scheduler restart, so the SQLite records and the checkpoints are what let jobs
resume.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from distnmf.dask_context import cluster_summary
from distnmf_api.errors import ClusterUnavailable
from distnmf_api.settings import Settings

log = logging.getLogger("distnmf.api")

CONNECT_TIMEOUT = 5.0  # seconds a client tries to (re)connect to the scheduler before giving up
WATCH_EVERY = 1.0  # seconds between looks at the scheduler


@dataclass(frozen=True)
class ClusterState:
    """What the watcher last saw: the scheduler's id (None: unreachable) and its worker count."""

    scheduler_id: str | None = None
    n_workers: int = 0

    @property
    def ready(self) -> bool:
        """Whether jobs can run: a scheduler with at least one worker."""
        return self.scheduler_id is not None and self.n_workers > 0

    @property
    def problem(self) -> str | None:
        """Why jobs cannot run, or None when they can (no address: /health shows it to anyone)."""
        if self.scheduler_id is None:
            return "no Dask scheduler reachable; jobs wait for it"
        if self.n_workers == 0:
            return "the Dask scheduler has no workers; jobs wait for one"
        return None


class Cluster:
    """The Dask cluster jobs run on: ``DISTNMF_SCHEDULER``, or an embedded ``LocalCluster``.

    The embedded cluster talks TLS with certificates made for it in memory
    (``Security.temporary()``), so only this process and its workers can connect: no other
    local process can submit work. An external scheduler is reached with the TLS files of
    ``DISTNMF_TLS_CA_FILE``/``_CERT``/``_KEY``, else Dask's own ``distributed.comm.tls`` config.
    The service starts even when that scheduler is not reachable yet; it reports the degraded
    state and connects once the scheduler is up.
    """

    def __init__(self, settings: Settings) -> None:
        from distributed import LocalCluster

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
        self.dashboard_url: str | None = None
        self._client: Any = None
        self._state = ClusterState()
        self._changed = threading.Condition()
        self._refresh_lock = threading.Lock()
        self._closing = threading.Event()
        self.refresh()
        self._watcher = threading.Thread(target=self._watch, name="distnmf-cluster-watch", daemon=True)
        self._watcher.start()

    def connect(self) -> Any:
        """A new ``distributed.Client`` on the cluster, with its credentials; the caller closes it."""
        from distributed import Client

        return Client(self.address, security=self.security, set_as_default=False, timeout=CONNECT_TIMEOUT)

    @property
    def client(self) -> Any:
        """The service's own client, for short requests; :class:`ClusterUnavailable` while the
        scheduler is unreachable."""
        client = self._client
        if client is None or client.status != "running" or self._state.scheduler_id is None:
            raise ClusterUnavailable(self._state.problem or "reconnecting to the Dask scheduler")
        return client

    @property
    def state(self) -> ClusterState:
        return self._state

    def refresh(self) -> ClusterState:
        """Look at the scheduler now (with a new client if the old one gave up) and publish it."""
        with self._refresh_lock:
            state = ClusterState()
            try:
                if self._client is None or self._client.status in ("closing", "closed"):
                    self._client = None
                    self._client = self.connect()
                    self.dashboard_url = self._client.dashboard_link
                    self._warm_workers(self._client)
                if self._client.status == "running":
                    state = ClusterState(*cluster_summary(self._client))
            except Exception as exc:  # unreachable, refused, closed mid-call: all mean "not now"
                log.debug("scheduler at %s not reachable: %s", self.address, exc)
            self._publish(state)
            return state

    @staticmethod
    def _warm_workers(client: Any) -> None:
        """Have every worker, present and future, import the engine (in the background: the
        service does not wait for it)."""
        from distnmf.one_task import WarmEngine

        def register() -> None:
            try:
                client.register_plugin(WarmEngine())
            except Exception as exc:  # workers without distnmf fail their first job with a clearer error
                log.warning("could not have the workers import the engine ahead of jobs: %s", exc)

        threading.Thread(target=register, name="distnmf-warm-workers", daemon=True).start()

    def wait_until_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a scheduler with a worker; whether there is one."""
        with self._changed:
            return self._changed.wait_for(lambda: self._state.ready or self._closing.is_set(), timeout) \
                and self._state.ready

    def close(self) -> None:
        self._closing.set()
        with self._changed:
            self._changed.notify_all()
        self._watcher.join()
        if self._client is not None:
            self._client.close()
        if self._local is not None:
            self._local.close()

    def _watch(self) -> None:
        while not self._closing.wait(WATCH_EVERY):
            self.refresh()

    def _publish(self, state: ClusterState) -> None:
        previous, self._state = self._state, state
        if state != previous:
            if problem := state.problem:
                log.warning("cluster degraded (scheduler %s): %s", self.address, problem)
            else:
                log.info("cluster ready: scheduler %s (%s) with %d workers", self.address, state.scheduler_id,
                         state.n_workers)
        with self._changed:
            self._changed.notify_all()


def external_security(settings: Settings) -> Any:
    """The ``distributed.security.Security`` for ``settings.scheduler``: the DISTNMF_TLS_* files
    when given (encryption then required), else whatever Dask's configuration says."""
    from distributed.security import Security

    if settings.tls_cert is None and settings.tls_ca_file is None:
        return Security()
    return Security(tls_ca_file=str(settings.tls_ca_file) if settings.tls_ca_file else None,
                    tls_client_cert=str(settings.tls_cert) if settings.tls_cert else None,
                    tls_client_key=str(settings.tls_key) if settings.tls_key else None, require_encryption=True)
