"""What an ingest produced: the opened matrix, what was skipped, and a one-paragraph summary."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from distnmf.store import Matrix

T = TypeVar("T")

MAX_SKIPPED_EXAMPLES = 20


@dataclass
class IngestReport:
    """The result of one ingest.

    Attributes
    ----------
    kind : ``"array"``, ``"images"``, ``"tags"``, ``"text"`` or ``"ratings"``.
    source : the file or folder read.
    matrix : the written store, opened (:class:`distnmf.store.Matrix`).
    n_skipped : how many inputs (files, records, lines) were skipped.
    skipped : up to 20 examples of skipped inputs as ``(where, reason)`` pairs.
    notes : extra sentences for the summary (e.g. how many tags ``min_count`` kept).
    seconds : wall time of the ingest.
    details : kind-specific results, e.g. ``idf`` of shape (n_cols,) for tf-idf stores.
    """

    kind: str
    source: Path
    matrix: Matrix
    n_skipped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    @property
    def nnz(self) -> int:
        return self.matrix.nnz

    @property
    def density(self) -> float:
        return self.matrix.density

    @property
    def disk_bytes(self) -> int:
        """Size of the store on disk, in bytes."""
        return directory_size(self.matrix.path)

    def summary(self) -> str:
        """One paragraph: shape, non-zeros, density, size on disk, time, what was skipped."""
        rows, cols = self.shape
        layout = "sparse" if self.matrix.is_sparse else "dense"
        parts = [
            f"Ingested {self.kind} from {self.source} into {self.matrix.path}: a {layout} "
            f"{rows:,} x {cols:,} float32 matrix with {self.nnz:,} non-zeros "
            f"(density {self.density:.3g}), {human_bytes(self.disk_bytes)} on disk, "
            f"in {self.seconds:.1f} s."
        ]
        parts.extend(self.notes)
        if self.n_skipped:
            examples = "; ".join(f"{where}: {reason}" for where, reason in self.skipped[:3])
            more = ", ..." if self.n_skipped > 3 else ""
            parts.append(f"Skipped {self.n_skipped:,} ({examples}{more}).")
        else:
            parts.append("Nothing was skipped.")
        return " ".join(parts)

    def __str__(self) -> str:
        return self.summary()


class SkipLog:
    """Counts skipped inputs and keeps the first few as examples."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[tuple[str, str]] = []

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_SKIPPED_EXAMPLES:
            self.examples.append((where, reason))


class Stopwatch:
    """Wall time since creation."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start


def progress(iterable: Iterable[T], *, total: int | None, desc: str, unit: str = "it",
             enabled: bool | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr.

    ``enabled=None`` shows the bar only when stderr is a terminal; True/False force it.
    """
    disable = None if enabled is None else not enabled
    return iter(tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable,
                     dynamic_ncols=True, leave=False))


def directory_size(path: str | os.PathLike) -> int:
    """Total size in bytes of the files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(os.fspath(path)):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def human_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
