"""Seeded synthetic data with planted structure, streamed straight to disk at any size.

- :func:`tag_set` / :func:`tag_records`: an item x tag occurrence set with Zipf tag popularity
  and planted topics (the seed's 75,000 x 73,890 with ~1.35 M assignments by default), as a
  sparse store or as the JSON Lines file that :func:`distnmf.ingest.ingest_tags` reads;
- :func:`pixel_corpus`: dense images mixed from planted smooth blobs, optionally with planted
  near-duplicate groups, of any size (larger than memory included);
- :func:`ratings` / :func:`rating_table`: a low-rank user x item rating table, as a store or CSV;
- :func:`documents`: text lines drawn from planted topics of pseudo-words.

Rows are generated in blocks of ``GEN_ROWS`` rows, block ``b`` from a random generator seeded
by ``(seed, kind, b)``; global structure (topics, parts) comes from ``(seed, kind)``. Output
therefore depends only on the parameters and the seed, never on memory or write sizes.
Each function returns the planted ground truth so tests can check what NMF recovers.
"""

from distnmf.synth.blocks import GEN_ROWS
from distnmf.synth.corpora import PlantedDocuments, documents, pseudo_words
from distnmf.synth.pixels import PlantedPixels, pixel_corpus
from distnmf.synth.ratingtables import PlantedRatings, rating_table, ratings
from distnmf.synth.tagsets import PlantedTags, tag_records, tag_set

__all__ = ["GEN_ROWS", "PlantedDocuments", "PlantedPixels", "PlantedRatings", "PlantedTags", "documents",
           "pixel_corpus", "pseudo_words", "rating_table", "ratings", "tag_records", "tag_set"]
