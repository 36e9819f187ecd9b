"""What every generator shares: rows made in blocks of ``GEN_ROWS``, each block from its own
seeded generator, labels, atomic text output and Zipf draws."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np

from distnmf.storage import atomic_path

GEN_ROWS = 4096
TAGS, TAG_SPLIT, PIXELS, RATINGS, DOCS, CALIBRATE = range(6)


def seeded_rng(seed: int, kind: int, block: int | None = None) -> np.random.Generator:
    key = (kind,) if block is None else (kind, block)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def n_blocks(n_rows: int) -> int:
    return -(-n_rows // GEN_ROWS)


def block_range(b: int, n_rows: int) -> tuple[int, int]:
    return b * GEN_ROWS, min(n_rows, (b + 1) * GEN_ROWS)


def make_labels(prefix: str, n: int) -> list[str]:
    width = len(str(max(n - 1, 0)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


@contextlib.contextmanager
def atomic_text(path: str | os.PathLike, overwrite: bool) -> Iterator[TextIO]:
    """A text file written under a temporary name and renamed into place on success."""
    with atomic_path(Path(path), overwrite) as tmp, open(tmp, "w", encoding="utf-8") as file:
        yield file


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
