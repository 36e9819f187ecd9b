"""Naming rows and columns in queries: a label or a position resolved to an index, with errors
that say what exists; and the checks of ``k`` and of the axis a query names."""

from __future__ import annotations

import difflib

import numpy as np

AXES = ("rows", "columns")
_SUGGEST_MAX_LABELS = 200_000


class UnknownLabelError(ValueError, KeyError):
    """A label that is not on the axis; a ``ValueError`` (bad input) and a ``KeyError`` (lookup)."""

    __str__ = ValueError.__str__


class IndexOutOfRangeError(ValueError, IndexError):
    """An integer position outside the axis; a ``ValueError`` and an ``IndexError``."""

    __str__ = ValueError.__str__


def resolve_index(labels: np.ndarray | None, key: str | int, n: int, axis_name: str,
                  positions: dict[str, int] | None = None) -> int:
    """Position of ``key`` (a label or an integer index) on an axis of length ``n``.

    A string is looked up among ``labels``; a string of digits that is not a label is taken as
    an index (so "42" works on labelled and unlabelled axes alike). Raises :class:`UnknownLabelError`
    (naming the label and close matches)
    or :class:`IndexOutOfRangeError`; both are ``ValueError``. ``positions`` (label -> first position,
    e.g. ``Factors.row_positions``) makes the lookup O(1) instead of a scan of ``labels``.
    """
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        index = int(key)
        if not 0 <= index < n:
            raise IndexOutOfRangeError(f"{axis_name} index {index} is out of range: there are {n} "
                                       f"{axis_name}s (valid indices 0..{n - 1})")
        return index
    if not isinstance(key, str):
        raise ValueError(f"{axis_name} must be a label (str) or an index (int), got {type(key).__name__} {key!r}")
    if positions is not None:
        if key in positions:
            return positions[key]
    elif labels is not None and len(matches := np.flatnonzero(labels == key)):
        return int(matches[0])
    if key.strip().isdigit():
        return resolve_index(None, int(key), n, axis_name)
    if labels is None:
        raise UnknownLabelError(f"{axis_name} {key!r} not found: this store has no {axis_name} labels; "
                                f"pass an integer index in 0..{n - 1}")
    hint = ""
    if len(labels) <= _SUGGEST_MAX_LABELS:
        close = difflib.get_close_matches(key, labels.tolist(), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownLabelError(f"{axis_name} label {key!r} not found among {len(labels)} {axis_name} labels{hint}")


def check_k(k: int, available: int, what: str, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    if k > available:
        raise ValueError(f"{name}={k} is larger than the number of {what} ({available})")
    return int(k)


def check_axis(axis: str) -> str:
    if axis not in AXES:
        raise ValueError(f"axis must be 'rows' or 'columns', got {axis!r}")
    return axis
