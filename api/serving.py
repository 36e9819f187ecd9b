"""What the service holds in memory for finished jobs: their opened factors (H, labels and label
positions, loaded once) and their similarity indexes, evicted under one memory budget.

Every process serving queries (the primary and its query workers, :mod:`distnmf_api.query_workers`)
has its own :class:`Served`. The primary forgets a store before deleting it and then touches the
data directory's ``served.generation`` file; a query worker looks at that file's modification time
before each query (one ``stat``) and, when it changed, drops everything it holds, so a deleted job
is never answered from a stale copy."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from distnmf import kernels
from distnmf.factors import Factors, open_factors
from distnmf.index import IndexCache
from distnmf.storage import Location

log = logging.getLogger("distnmf.api")

OPEN_FACTORS = 64  # opened factors stores kept (each holds H and the labels)


def ready_to_serve() -> None:
    """What a serving process does once started, before its first query: load the compiled kernels,
    the fold-in among them (numba and its cached machine code, ~1 s during which a first transform
    would hold the GIL and stall every other query), then freeze the garbage collector's view of all
    it has loaded. Without the freeze, a full collection scanned the primary's ~400,000 start-up
    objects (the Dask scheduler, the libraries) in 100-260 ms, a stall of every query in the
    process, measured."""
    kernels.load_compiled()
    gc.freeze()


class Served:
    """Opened factors by path (least recently used dropped beyond :data:`OPEN_FACTORS`) and an
    :class:`~distnmf.index.IndexCache` of ``index_memory_bytes`` (``build_approximate``: build faiss
    indexes not persisted yet, else only load them); ``generation`` is the file whose modification
    time says when factors were last deleted (None: no other process to tell)."""

    def __init__(self, index_memory_bytes: int, approximate_from: int, generation: Path | None = None,
                 build_approximate: bool = True) -> None:
        self.indexes = IndexCache(index_memory_bytes, approximate_from, build_approximate=build_approximate)
        self.generation = generation
        self._factors: OrderedDict[Location, Factors] = OrderedDict()
        self._lock = threading.Lock()
        self._seen = self._generation_now()
        self._touched = 0

    def opened(self, path: Location) -> Factors | None:
        """The store's factors if they are already open (never blocks on storage), else None."""
        with self._lock:
            if path in self._factors:
                self._factors.move_to_end(path)
                return self._factors[path]
        return None

    def factors(self, path: Location) -> Factors:
        with self._lock:
            if path in self._factors:
                self._factors.move_to_end(path)
                return self._factors[path]
        opened = open_factors(path)
        opened.row_positions, opened.col_positions  # noqa: B018 - labels and their lookups loaded here, off the event loop
        with self._lock:
            self._factors[path] = opened
            while len(self._factors) > OPEN_FACTORS:
                self._factors.popitem(last=False)
        return opened

    def forget(self, path: Location) -> None:
        """Drop a store's opened factors and indexes (before it is deleted), here and, through the
        generation file, in every query worker."""
        with self._lock:
            self._factors.pop(path, None)
        self.indexes.discard(path)
        if self.generation is not None:
            self._touched = max(time.time_ns(), self._touched + 1)  # strictly increasing, whatever the clock's step
            self.generation.touch()
            os.utime(self.generation, ns=(self._touched, self._touched))

    def refresh(self) -> None:
        """Drop everything held if factors were deleted (by another process) since the last look."""
        now = self._generation_now()
        if now != self._seen:
            with self._lock:
                self._factors.clear()
            self.indexes.clear()
            self._seen = now
            log.info("factors were deleted: dropped the opened factors and indexes of this process")

    def _generation_now(self) -> int | None:
        if self.generation is None:
            return None
        try:
            return os.stat(self.generation).st_mtime_ns
        except FileNotFoundError:
            return None
