"""Tag sets into a sparse item x tag matrix: 0/1 occurrences, optionally the seed's tf-idf.

Input records map an item id to its tags, either as JSON Lines (one object per line)::

    {"id": "QSzdNJvF-Ak", "high_conf_tags": ["electric", "guitar"], "low_conf_tags": ["jazz"]}
    {"id": "x1", "tags": ["cat", "pet"]}

or as one JSON document: an object ``{item_id: record}`` whose records are such objects (the
``id`` field may then be omitted) or plain lists of tags, or a list of records. The tag
fields present in a record (by default ``tags``, ``high_conf_tags`` and ``low_conf_tags``)
are merged as a set. JSON Lines is read in two streaming passes (count tags, then build the
rows), so memory holds the vocabulary and the item ids, never the records; a JSON document
is parsed whole.

The seed's metadata came as a pickle, which is unsafe to load from others. Convert it once,
on a machine that trusts it, to JSON Lines::

    python - <<'EOF'
    import json, pickle
    metadata = pickle.load(open("metadata.pickle", "rb"))
    with open("tags.jsonl", "w") as out:
        for key, v in metadata.items():
            tags = {"high_conf_tags": sorted(v["high_conf_tags"]), "low_conf_tags": sorted(v["low_conf_tags"])}
            out.write(json.dumps({"id": key, **tags}) + "\\n")
    EOF
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from distnmf.ingest.report import IngestReport, SkipLog, Stopwatch, progress
from distnmf.matrixwriter import MatrixWriter

DEFAULT_TAG_FIELDS = ("tags", "high_conf_tags", "low_conf_tags")
BLOCK_ITEMS = 2**16


def seed_idf(df: np.ndarray, n_items: int) -> np.ndarray:
    """The seed's inverse document frequency, ``ln(n_items / (df + 0.1))``, clipped at 0.

    ``df`` of shape (n_tags,) counts the items carrying each tag. A tag on every item would
    get ``ln(n / (n + 0.1)) < 0``; NMF needs non-negative input, so its weight is 0 instead
    (the only departure from the seed). Returns float64 of shape (n_tags,).
    """
    return np.maximum(np.log(n_items / (np.asarray(df, dtype=np.float64) + 0.1)), 0.0)


def iter_tag_records(path: str | os.PathLike, *, id_field: str = "id",
                     tag_fields: Sequence[str] = DEFAULT_TAG_FIELDS, strict: bool = False,
                     on_skip: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Yield ``(item_id, tags)`` for each well-formed record of a JSON / JSON Lines tag file.

    ``tags`` is the de-duplicated union of the record's tag fields, in first-seen order.
    A malformed record (invalid JSON, no id, no tag field, tags not a list of strings, an id
    seen before) raises ``ValueError`` naming the file and line when ``strict``, else is
    passed to ``on_skip(where, reason)`` and skipped.
    """
    path = Path(path)
    seen: dict[str, str] = {}
    for where, payload, is_text in _raw_records(path):
        try:
            item_id, tags = _parse_record(json.loads(payload) if is_text else payload, id_field, tag_fields)
            if item_id in seen:
                raise ValueError(f"duplicate id {item_id!r} (first seen at {seen[item_id]})")
        except ValueError as exc:
            if strict:
                raise ValueError(f"{path}, {where}: {exc}") from None
            if on_skip is not None:
                on_skip(where, str(exc))
            continue
        seen[item_id] = where
        yield item_id, tags


def _raw_records(path: Path) -> Iterator[tuple[str, Any, bool]]:
    """``(where, payload, is_text)``: JSON Lines give raw lines, a JSON document parsed records."""
    if path.suffix.lower() == ".json":
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}); "
                             f"for one record per line use the .jsonl suffix") from None
        if isinstance(doc, dict):
            for key, record in doc.items():
                if isinstance(record, list):
                    record = {"tags": record}
                if isinstance(record, dict):
                    record = {"__key__": key, **record}
                yield f"record {key!r}", record, False
        elif isinstance(doc, list):
            for i, record in enumerate(doc):
                yield f"record #{i}", record, False
        else:
            raise ValueError(f"{path}: a JSON tag file must hold an object or a list, got {type(doc).__name__}")
        return
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, start=1):
            if line.strip():
                yield f"line {no}", line, True


def _parse_record(record: Any, id_field: str, tag_fields: Sequence[str]) -> tuple[str, list[str]]:
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    item_id = record.get(id_field, record.get("__key__"))
    if item_id is None or isinstance(item_id, (dict, list, bool)) or item_id == "":
        raise ValueError(f"record has no usable {id_field!r} field")
    present = [name for name in tag_fields if name in record]
    if not present:
        raise ValueError(f"record {item_id!r} has none of the tag fields {list(tag_fields)}")
    tags: dict[str, None] = {}
    for name in present:
        values = record[name]
        if not isinstance(values, list) or not all(isinstance(t, str) for t in values):
            raise ValueError(f"record {item_id!r}: {name!r} must be a list of strings")
        tags.update(dict.fromkeys(values))
    return str(item_id), list(tags)


def ingest_tags(src: str | os.PathLike, dest: str | os.PathLike, *, min_count: int = 1,
                max_tags: int | None = None, tfidf: bool = False, strict: bool = False,
                id_field: str = "id", tag_fields: Sequence[str] = DEFAULT_TAG_FIELDS,
                compression: str | None = None, overwrite: bool = False,
                show_progress: bool | None = None) -> IngestReport:
    """Build the sparse item x tag matrix of a tag file into the store ``dest``.

    Parameters
    ----------
    src : JSON Lines (any suffix but ``.json``) or JSON (``.json``) tag records.
    dest : path of the store to create; X has shape (n_items, n_tags), CSR float32.
    min_count : keep the tags carried by at least ``min_count`` items (records). The seed's
        "more than 20 occurrences" is ``min_count=21``.
    max_tags : then keep only the ``max_tags`` most frequent of those.
    tfidf : weight entry (i, t) by the seed's idf ``ln(n_items / (df_t + 0.1))`` instead of
        1, where ``n_items`` counts the rows and ``df_t`` the rows carrying tag t
        (:func:`seed_idf`); otherwise entries are 1.
    strict : raise on the first malformed record instead of skipping and reporting it.
    id_field, tag_fields : record field holding the item id, and the fields merged as tags.
    compression, overwrite : as for :class:`distnmf.matrixwriter.MatrixWriter`.
    show_progress : progress bars on stderr; default only on a terminal.

    Rows follow the file's record order (well-formed records only; items left with no kept
    tag are empty rows); row labels are the item ids. Columns are the kept tags by
    decreasing count, ties by name; column labels are the tags. ``report.details`` holds
    ``tag_counts`` (n_tags,) and ``idf`` (n_tags,) or None.

    Raises
    ------
    FileNotFoundError : no file at ``src``.
    ValueError : a malformed record with ``strict``, no well-formed record, or no tag
        reaching ``min_count`` (no store is left).
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no tag file at {src}")
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_tags is not None and max_tags < 1:
        raise ValueError(f"max_tags must be >= 1 or None, got {max_tags}")
    clock = Stopwatch()
    skipped = SkipLog()
    records: dict[str, Any] = {"id_field": id_field, "tag_fields": tuple(tag_fields), "strict": strict}

    counts: Counter[str] = Counter()
    ids: list[str] = []
    for item_id, tags in progress(iter_tag_records(src, on_skip=skipped.add, **records), total=None,
                                  desc="count tags", unit="record", enabled=show_progress):
        ids.append(item_id)
        counts.update(tags)
    if not ids:
        raise ValueError(f"{src} holds no well-formed tag record"
                         + (f" ({skipped.examples[0][0]}: {skipped.examples[0][1]})" if skipped.examples else ""))
    vocab = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    if max_tags is not None:
        vocab = vocab[:max_tags]
    if not vocab:
        raise ValueError(f"{src}: no tag is on at least min_count={min_count} items "
                         f"(the most frequent is on {counts.most_common(1)[0][1]})")
    column = {t: j for j, t in enumerate(vocab)}
    tag_counts = np.array([counts[t] for t in vocab], dtype=np.int64)
    idf = seed_idf(tag_counts, len(ids)) if tfidf else None
    weights = idf.astype(np.float32) if idf is not None else None

    n_empty = 0
    attrs = {"ingest": {"kind": "tags", "source": str(src), "min_count": min_count,
                        "max_tags": max_tags, "tfidf": tfidf}}
    with MatrixWriter(dest, len(vocab), sparse=True, compression=compression, overwrite=overwrite,
                      row_labels=ids, col_labels=vocab, attrs=attrs) as writer:
        rows: list[list[int]] = []
        for _item_id, tags in progress(iter_tag_records(src, **records), total=len(ids),
                                       desc="build rows", unit="record", enabled=show_progress):
            cols = sorted(column[t] for t in tags if t in column)
            n_empty += not cols
            rows.append(cols)
            if len(rows) == BLOCK_ITEMS:
                writer.append(_occurrence_block(rows, len(vocab), weights))
                rows = []
        if rows:
            writer.append(_occurrence_block(rows, len(vocab), weights))
    notes = [f"Kept {len(vocab):,} of {len(counts):,} distinct tags (on at least {min_count} items"
             + (f", at most {max_tags}" if max_tags is not None else "") + f"); {n_empty:,} items have none."]
    if tfidf:
        notes.append("Entries are weighted by the seed's idf ln(n_items / (df + 0.1)).")
    return IngestReport("tags", src, writer.matrix, n_skipped=skipped.count, skipped=skipped.examples,
                        notes=notes, seconds=clock.seconds,
                        details={"tag_counts": tag_counts, "idf": idf, "n_distinct_tags": len(counts)})


def _occurrence_block(rows: list[list[int]], n_cols: int, weights: np.ndarray | None) -> sp.csr_array:
    """CSR of shape (len(rows), n_cols): 1 (or ``weights[t]``) at each listed column."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    indices = np.fromiter((j for r in rows for j in r), dtype=np.int32, count=int(indptr[-1]))
    data = weights[indices] if weights is not None else np.ones(len(indices), dtype=np.float32)
    block = sp.csr_array((data, indices, indptr), shape=(len(rows), n_cols))
    block.eliminate_zeros()
    return block
