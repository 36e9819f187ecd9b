"""Ingest the data users have into matrix stores: arrays, image folders, tag sets, text, ratings.

Each ``ingest_*`` function streams its input into a new Zarr store through
:class:`distnmf.matrixwriter.MatrixWriter` (nothing is left behind on error) and returns an
:class:`IngestReport` with the opened matrix and a one-paragraph ``summary()``.

Names are imported on first use (PEP 562), so a Dask worker that unpickles an image-decoding
task imports Pillow only, not scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IngestReport": "distnmf.ingest.report",
    "ingest_array": "distnmf.ingest.arrays",
    "ingest_images": "distnmf.ingest.images",
    "load_image": "distnmf.ingest.images",
    "ingest_ratings": "distnmf.ingest.ratings",
    "ingest_tags": "distnmf.ingest.tags",
    "iter_tag_records": "distnmf.ingest.tags",
    "seed_idf": "distnmf.ingest.tags",
    "ingest_text": "distnmf.ingest.text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'distnmf.ingest' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
