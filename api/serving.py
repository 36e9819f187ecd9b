"""What the service holds in memory for finished jobs: their opened factors (H, labels and label
positions, loaded once) and their similarity indexes, evicted under one memory budget."""

from __future__ import annotations

import threading
from collections import OrderedDict

from distnmf.factors import Factors, open_factors
from distnmf.index import IndexCache
from distnmf.storage import Location

OPEN_FACTORS = 64  # opened factors stores kept (each holds H and the labels)


class Served:
    """Opened factors by path (least recently used dropped beyond :data:`OPEN_FACTORS`) and an
    :class:`~distnmf.index.IndexCache` of ``index_memory_bytes``."""

    def __init__(self, index_memory_bytes: int, approximate_from: int) -> None:
        self.indexes = IndexCache(index_memory_bytes, approximate_from)
        self._factors: OrderedDict[Location, Factors] = OrderedDict()
        self._lock = threading.Lock()

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
        with self._lock:
            self._factors[path] = opened
            while len(self._factors) > OPEN_FACTORS:
                self._factors.popitem(last=False)
        return opened

    def forget(self, path: Location) -> None:
        """Drop a store's opened factors and indexes (before it is deleted)."""
        with self._lock:
            self._factors.pop(path, None)
        self.indexes.discard(path)
