"""Ingest the data users have into matrix stores: arrays, image folders, tag sets, text, ratings.

Each ``ingest_*`` function streams its input into a new Zarr store through
:class:`distnmf.store.MatrixWriter` (nothing is left behind on error) and returns an
:class:`IngestReport` with the opened matrix and a one-paragraph ``summary()``.
"""

from distnmf.ingest.arrays import ingest_array
from distnmf.ingest.images import ingest_images, load_image
from distnmf.ingest.ratings import ingest_ratings
from distnmf.ingest.report import IngestReport
from distnmf.ingest.tags import iter_tag_records, ingest_tags, seed_idf
from distnmf.ingest.text import ingest_text

__all__ = ["IngestReport", "ingest_array", "ingest_images", "ingest_ratings", "ingest_tags", "ingest_text",
           "iter_tag_records", "load_image", "seed_idf"]
