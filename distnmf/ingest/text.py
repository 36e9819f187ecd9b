"""Text documents into a sparse tf-idf matrix, vectorised in parallel over partitions.

Documents are the non-blank lines of one file (row label: the line number) or the files of
a folder, recursively (row label: the relative path). Two passes over partitions of
documents, on the active Dask client when there is one, else in this process:

1. count, per partition, each term's document frequency and total count; the driver sums
   them and picks the vocabulary (``min_df``, ``max_df``, then the ``max_features`` most
   frequent terms; ties alphabetical), sorted alphabetically as scikit-learn does;
2. transform each partition with a ``CountVectorizer`` on that fixed vocabulary, weight by
   idf and normalise rows, and append the blocks to the store in order.

The result equals scikit-learn's ``TfidfVectorizer(stop_words=..., min_df=..., max_df=...,
max_features=...)`` with its defaults (``smooth_idf=True``: ``idf = ln((1 + n) / (1 + df)) + 1``;
rows scaled to unit L2 norm), in float32. Documents or whole partitions with no tokens give
empty rows, never an error.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.preprocessing import normalize

from distnmf.ingest.images import list_files
from distnmf.ingest.report import IngestReport, Stopwatch, progress
from distnmf.matrixwriter import MatrixWriter
from distnmf.runner import ClientArg, make_runner

TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # noqa: S105 - a regular expression, not a password


@dataclass(frozen=True)
class Partition:
    """A run of documents: lines ``first_line...`` in bytes ``[start, stop)`` of the file
    ``path``, or, when ``files`` is set, those files (relative to the folder ``path``)."""

    path: str
    start: int = 0
    stop: int = 0
    first_line: int = 1
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Analyzer:
    """Tokenisation shared by both passes (scikit-learn's word analyzer)."""

    stop_words: str | None = "english"
    lowercase: bool = True
    token_pattern: str = TOKEN_PATTERN

    def vectorizer(self, vocabulary: list[str] | None = None) -> CountVectorizer:
        return CountVectorizer(stop_words=self.stop_words, lowercase=self.lowercase,
                               token_pattern=self.token_pattern, vocabulary=vocabulary, dtype=np.float32)


def read_partition(part: Partition, encoding: str = "utf-8") -> tuple[list[str], list[str]]:
    """``(labels, documents)`` of a partition; undecodable bytes become U+FFFD."""
    if part.files:
        docs = [Path(part.path, rel).read_text(encoding=encoding, errors="replace") for rel in part.files]
        return list(part.files), docs
    with open(part.path, "rb") as f:
        f.seek(part.start)
        raw = f.read(part.stop - part.start)
    labels: list[str] = []
    docs = []
    for i, line in enumerate(raw.split(b"\n")):
        text = line.decode(encoding, errors="replace").rstrip("\r")
        if text.strip():
            labels.append(str(part.first_line + i))
            docs.append(text)
    return labels, docs


def count_terms(part: Partition, analyzer: Analyzer, encoding: str) -> tuple[Counter, Counter, int]:
    """Pass 1 task: ``(document frequency, total count, n_documents)`` of a partition's terms."""
    _labels, docs = read_partition(part, encoding)
    analyze = analyzer.vectorizer().build_analyzer()
    df: Counter[str] = Counter()
    tf: Counter[str] = Counter()
    for doc in docs:
        tokens = analyze(doc)
        tf.update(tokens)
        df.update(set(tokens))
    return df, tf, len(docs)


def tfidf_partition(part: Partition, analyzer: Analyzer, vocabulary: list[str], idf: np.ndarray,
                    norm: str | None, encoding: str) -> tuple[list[str], sp.csr_array]:
    """Pass 2 task: ``(labels, X)`` with X the partition's tf-idf rows, CSR float32 of shape
    (n_documents, len(vocabulary))."""
    labels, docs = read_partition(part, encoding)
    if not docs:
        return labels, sp.csr_array((0, len(vocabulary)), dtype=np.float32)
    counts = sp.csr_array(analyzer.vectorizer(vocabulary).transform(docs), dtype=np.float64)
    weighted = counts @ sp.diags_array(idf)
    if norm is not None:
        weighted = normalize(weighted, norm=norm)
    return labels, sp.csr_array(weighted, dtype=np.float32)


def plan_partitions(src: Path, docs_per_partition: int) -> list[Partition]:
    """Split a file at line boundaries (one binary scan), or a folder's sorted file list."""
    if src.is_dir():
        files = list_files(src)
        return [Partition(str(src), files=tuple(files[i:i + docs_per_partition]))
                for i in range(0, len(files), docs_per_partition)]
    parts: list[Partition] = []
    start, first_line, n_lines, pos = 0, 1, 0, 0
    with open(src, "rb") as f:
        for line in f:
            pos += len(line)
            n_lines += 1
            if n_lines % docs_per_partition == 0:
                parts.append(Partition(str(src), start, pos, first_line))
                start, first_line = pos, n_lines + 1
    if pos > start:
        parts.append(Partition(str(src), start, pos, first_line))
    return parts


def select_vocabulary(df: Counter, tf: Counter, n_docs: int, min_df: int | float, max_df: int | float,
                      max_features: int | None) -> list[str]:
    """Terms with ``min_df <= df <= max_df`` (ints: documents; floats: fractions of ``n_docs``),
    then the ``max_features`` with the highest total count (ties alphabetical); sorted."""
    low = min_df if isinstance(min_df, int) else min_df * n_docs
    high = max_df if isinstance(max_df, int) else max_df * n_docs
    if high < low:
        raise ValueError(f"max_df={max_df} corresponds to fewer documents than min_df={min_df}")
    terms = sorted(t for t, d in df.items() if low <= d <= high)
    if max_features is not None and len(terms) > max_features:
        terms = sorted(sorted(terms, key=lambda t: -tf[t])[:max_features])
    return terms


def ingest_text(src: str | os.PathLike, dest: str | os.PathLike, *, max_features: int | None = None,
                min_df: int | float = 1, max_df: int | float = 1.0, stop_words: str | None = "english",
                lowercase: bool = True, norm: str | None = "l2", docs_per_partition: int = 10_000,
                encoding: str = "utf-8", client: ClientArg = None, compression: str | None = None,
                overwrite: bool = False, show_progress: bool | None = None) -> IngestReport:
    """Write the tf-idf matrix of the documents in ``src`` to the store ``dest``.

    Parameters
    ----------
    src : a text file (one document per non-blank line) or a folder (one document per file).
    dest : path of the store to create; X has shape (n_documents, n_terms), CSR float32;
        column labels are the terms, row labels line numbers or relative file paths.
    max_features : keep at most this many terms, the most frequent in the corpus.
    min_df, max_df : keep terms in at least ``min_df`` and at most ``max_df`` documents
        (an int counts documents, a float is a fraction of them).
    stop_words : ``"english"`` (scikit-learn's list) or None.
    lowercase : lowercase before tokenising (tokens: runs of 2+ word characters).
    norm : ``"l2"`` (default), ``"l1"`` or None for the row normalisation.
    docs_per_partition : documents per parallel task.
    encoding : text encoding; undecodable bytes are replaced, not fatal.
    client : a ``distributed.Client``; default the active one if any; ``False`` works here.
    compression, overwrite : as for :class:`distnmf.matrixwriter.MatrixWriter`.
    show_progress : progress bars on stderr; default only on a terminal.

    ``report.details`` holds ``idf`` of shape (n_terms,) and ``df`` (document frequencies).

    Raises
    ------
    FileNotFoundError : nothing at ``src``.
    ValueError : no documents, or no term left after ``min_df``/``max_df``/stop words
        (no store is left).
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"no text file or folder at {src}")
    if docs_per_partition < 1:
        raise ValueError(f"docs_per_partition must be >= 1, got {docs_per_partition}")
    if max_features is not None and max_features < 1:
        raise ValueError(f"max_features must be >= 1 or None, got {max_features}")
    clock = Stopwatch()
    analyzer = Analyzer(stop_words=stop_words, lowercase=lowercase)
    parts = plan_partitions(src, docs_per_partition)
    runner = make_runner(client)
    try:

        df: Counter[str] = Counter()
        tf: Counter[str] = Counter()
        n_docs = 0
        counted = runner.imap("ingest-text-count", count_terms, parts, shared=(analyzer, encoding))
        for part_df, part_tf, part_n in progress(counted, total=len(parts), desc="count terms",
                                                 unit="partition", enabled=show_progress):
            df.update(part_df)
            tf.update(part_tf)
            n_docs += part_n
        if n_docs == 0:
            raise ValueError(f"{src} holds no documents (only blank lines or no files)")
        vocabulary = select_vocabulary(df, tf, n_docs, min_df, max_df, max_features)
        if not vocabulary:
            raise ValueError(f"{src}: no term is left after stop words and min_df={min_df}, max_df={max_df} "
                             f"({len(df):,} distinct terms in {n_docs:,} documents); lower min_df or raise max_df")
        doc_freq = np.array([df[t] for t in vocabulary], dtype=np.int64)
        idf = np.log((1 + n_docs) / (1 + doc_freq)) + 1.0

        labels: list[str] = []
        attrs = {"ingest": {"kind": "text", "source": str(src), "max_features": max_features,
                            "min_df": min_df, "max_df": max_df, "stop_words": stop_words, "norm": norm}}
        with MatrixWriter(dest, len(vocabulary), sparse=True, compression=compression, overwrite=overwrite,
                          col_labels=vocabulary, attrs=attrs) as writer:
            blocks = runner.imap("ingest-text-tfidf", tfidf_partition, parts,
                                 shared=(analyzer, vocabulary, idf, norm, encoding))
            for part_labels, block in progress(blocks, total=len(parts), desc="tf-idf", unit="partition",
                                               enabled=show_progress):
                if block.shape[0]:
                    writer.append(block)
                    labels.extend(part_labels)
            writer.row_labels = labels
        notes = [f"{n_docs:,} documents in {len(parts):,} partitions; kept {len(vocabulary):,} of "
                 f"{len(df):,} distinct terms."]
        return IngestReport("text", src, writer.matrix, notes=notes, seconds=clock.seconds,
                            details={"idf": idf, "df": doc_freq})
    finally:
        runner.close()
