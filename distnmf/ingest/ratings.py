"""Rating tables (user, item, rating) into a sparse user x item matrix with labels."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from distnmf.ingest.limits import IngestLimits
from distnmf.ingest.report import IngestReport, SkipLog, Stopwatch, progress
from distnmf.matrixwriter import MatrixWriter

BLOCK_USERS = 2**16
COLUMN_ALIASES = {
    "user": ("user", "userid", "user_id", "users"),
    "item": ("item", "itemid", "item_id", "items", "movie", "movieid", "movie_id", "product", "productid"),
    "rating": ("rating", "ratings", "score", "value", "stars"),
}


def ingest_ratings(src: str | os.PathLike, dest: str | os.PathLike, *, user_col: str | int | None = None,
                   item_col: str | int | None = None, rating_col: str | int | None = None,
                   header: bool | None = None, delimiter: str | None = None, duplicates: str = "last",
                   compression: str | None = None, overwrite: bool = False,
                   show_progress: bool | None = None, limits: IngestLimits | None = None) -> IngestReport:
    """Build the sparse user x item rating matrix of a CSV/TSV table into the store ``dest``.

    Parameters
    ----------
    src : delimited text with one rating per line.
    dest : path of the store to create; X has shape (n_users, n_items), CSR float32. Rows and
        columns follow the first appearance of each user and item; labels are their ids. A
        rating of 0 is stored as an explicit entry (it is a rating).
    user_col, item_col, rating_col : a header name or a 0-based column position. Default:
        with a header, the column named like ``user``/``userId``, ``item``/``movieId``,
        ``rating``/``score`` (case and ``_`` ignored); without one, columns 0, 1 and 2.
    header : whether the first line names the columns; default: detected (the first line
        is a header when its rating cell is not a number).
    delimiter : default from the suffix (``,`` for .csv, tab for .tsv/.tab), else sniffed.
    duplicates : a (user, item) pair rated twice keeps the ``"last"`` rating, or ``"error"``.
    compression, overwrite : as for :class:`distnmf.matrixwriter.MatrixWriter`.
    show_progress : progress bar on stderr; default only on a terminal.
    limits : lines longer than ``limits.max_line_bytes`` are refused before they are read whole.

    The (user, item, rating) triples are held in memory (16 bytes each, plus the labels);
    the matrix is written in row blocks.

    Raises
    ------
    FileNotFoundError : no file at ``src``.
    ValueError : a missing column, a non-numeric, negative or non-finite rating, a duplicate
        pair with ``duplicates="error"``, or no ratings; each names the line. No store is left.
    """
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no rating table at {src}")
    if duplicates not in ("last", "error"):
        raise ValueError(f"duplicates must be 'last' or 'error', got {duplicates!r}")
    clock = Stopwatch()
    blank = SkipLog()
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u_idx: list[int] = []
    i_idx: list[int] = []
    values: list[float] = []
    line_of: list[int] = []

    limits = limits or IngestLimits()
    with open(src, newline="", encoding="utf-8-sig") as f:
        first = next(limits.lines(f, str(src)), (1, ""))[1]
        f.seek(0)
        if not first.strip():
            raise ValueError(f"{src}: the first line is empty; expected a header or a rating")
        sep = delimiter or _guess_delimiter(src, first)
        reader = csv.reader((line for _, line in limits.lines(f, str(src))), delimiter=sep, skipinitialspace=True)
        first_cells = next(reader)
        cols, has_header = _resolve_columns(src, first_cells, header, user_col, item_col, rating_col)
        rows = progress(reader, total=None, desc=f"read {src.name}", unit="line", enabled=show_progress)
        pending = [] if has_header else [first_cells]
        for cells in _chain(pending, rows):
            no = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                blank.add(f"line {no}", "blank")
                continue
            if len(cells) <= max(cols):
                raise ValueError(f"{src}, line {no}: {len(cells)} fields, expected at least {max(cols) + 1}")
            user, item, raw = cells[cols[0]].strip(), cells[cols[1]].strip(), cells[cols[2]].strip()
            try:
                rating = float(raw)
            except ValueError:
                raise ValueError(f"{src}, line {no}: rating {raw!r} is not a number") from None
            if not math.isfinite(rating) or rating < 0:
                kind = "negative" if math.isfinite(rating) else "non-finite"
                raise ValueError(f"{src}, line {no}: {kind} rating {raw!r}; ratings must be finite and >= 0")
            u_idx.append(users.setdefault(user, len(users)))
            i_idx.append(items.setdefault(item, len(items)))
            values.append(rating)
            line_of.append(no)
    if not values:
        raise ValueError(f"{src} holds no ratings")

    u = np.asarray(u_idx, dtype=np.int64)
    i = np.asarray(i_idx, dtype=np.int64)
    r = np.asarray(values, dtype=np.float32)
    keep, n_replaced = _resolve_duplicates(u * len(items) + i, np.asarray(line_of), src, duplicates)
    X = sp.csr_array((r[keep], (u[keep], i[keep])), shape=(len(users), len(items)))
    X.sort_indices()
    attrs = {"ingest": {"kind": "ratings", "source": str(src)}}
    with MatrixWriter(dest, len(items), sparse=True, compression=compression, overwrite=overwrite,
                      row_labels=list(users), col_labels=list(items), attrs=attrs) as writer:
        for start in range(0, X.shape[0], BLOCK_USERS):
            writer.append(X[start:start + BLOCK_USERS])
    notes = [f"{len(r):,} ratings by {len(users):,} users of {len(items):,} items"
             + (f"; {n_replaced:,} repeated (user, item) pairs kept their last rating." if n_replaced else ".")]
    if blank.count:
        notes.append(f"{blank.count:,} blank lines were ignored.")
    return IngestReport("ratings", src, writer.matrix, notes=notes, seconds=clock.seconds)


def _chain(first: list[list[str]], rest):
    yield from first
    yield from rest


def _guess_delimiter(src: Path, first_line: str) -> str:
    suffix = src.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    for candidate in ("\t", ",", ";", "|"):
        if candidate in first_line:
            return candidate
    return " "


def _resolve_columns(src: Path, first: list[str], header: bool | None, *given: str | int | None
                     ) -> tuple[tuple[int, int, int], bool]:
    """Positions of the user, item and rating columns, and whether ``first`` is a header."""
    names = [c.strip() for c in first]
    if header is None:
        rating_pos = given[2] if isinstance(given[2], int) else (2 if given[2] is None else None)
        header = rating_pos is None or rating_pos >= len(names) or not _is_number(names[rating_pos])
    positions = []
    for role, choice in zip(("user", "item", "rating"), given):
        if isinstance(choice, int):
            pos = choice
        elif not header:
            if choice is not None:
                raise ValueError(f"{src}: {role}_col={choice!r} names a column, but the file has no header")
            pos = ("user", "item", "rating").index(role)
        else:
            wanted = (choice,) if choice is not None else COLUMN_ALIASES[role]
            keys = [n.lower().replace("_", "") for n in names]
            matches = [keys.index(w.lower().replace("_", "")) for w in wanted
                       if w.lower().replace("_", "") in keys]
            if not matches:
                raise ValueError(f"{src}: no {role} column in the header {names}; "
                                 f"name it with {role}_col=... (a name or a 0-based position)")
            pos = matches[0]
        if pos < 0:
            raise ValueError(f"{role}_col must be a name or a position >= 0, got {pos}")
        positions.append(pos)
    if len(set(positions)) != 3:
        raise ValueError(f"{src}: user, item and rating columns must differ, got positions {positions}")
    return (positions[0], positions[1], positions[2]), bool(header)


def _resolve_duplicates(keys: np.ndarray, lines: np.ndarray, src: Path, mode: str) -> tuple[np.ndarray, int]:
    """Indices of the entries to keep (the last of each repeated key) and how many were dropped."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeated = sorted_keys[1:] == sorted_keys[:-1]
    if not repeated.any():
        return np.arange(len(keys)), 0
    if mode == "error":
        j = int(np.argmax(repeated))
        raise ValueError(f"{src}, line {int(lines[order[j + 1]])}: the same user and item as line "
                         f"{int(lines[order[j]])}; pass duplicates='last' to keep the later rating")
    last = np.append(~repeated, True)
    return np.sort(order[last]), int(repeated.sum())


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
