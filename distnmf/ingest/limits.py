"""Limits an ingest reads its input under, checked against what a file declares before allocating."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, AnyStr


@dataclass(frozen=True)
class IngestLimits:
    """Bounds on what one ingest may produce or hold.

    Attributes
    ----------
    max_rows, max_cols : largest matrix shape accepted.
    max_values : most stored values (non-zeros of a sparse matrix, rows x cols of a dense one).
    max_line_bytes : longest line of a text input (CSV, Matrix Market, labels).
    memory_bytes : memory allowed for inputs that cannot be read a row block at a time
        (unsorted Matrix Market entries, non-CSR sparse ``.npz`` members).
    setting_prefix : names the settings in messages (the service passes ``"DISTNMF_"``).

    The library's defaults refuse nothing a machine could hold; the service passes its settings.
    """

    max_rows: int = sys.maxsize
    max_cols: int = sys.maxsize
    max_values: int = sys.maxsize
    max_line_bytes: int = 2**30
    memory_bytes: int = 8 * 2**30
    setting_prefix: str = ""

    def _exceeds(self, what: str, value: int, name: str) -> str:
        hint = f" (set {self.setting_prefix}{name.upper()} to change it)" if self.setting_prefix else ""
        return f"{what} {value:,} exceeds the limit {name}={getattr(self, name):,}{hint}"

    def check_shape(self, n_rows: int, n_cols: int, n_values: int, where: str) -> None:
        """Raise ``ValueError`` when a declared shape or number of stored values is over a limit."""
        for what, value, name in (("rows", n_rows, "max_rows"), ("columns", n_cols, "max_cols"),
                                  ("stored values", n_values, "max_values")):
            if value > getattr(self, name):
                raise ValueError(f"{where} declares {self._exceeds(what, value, name)}")

    def check_memory(self, n_bytes: int, where: str, advice: str) -> None:
        """Raise ``ValueError`` when reading ``where`` whole would take more than ``memory_bytes``."""
        if n_bytes > self.memory_bytes:
            raise ValueError(f"{where} must be read whole: {self._exceeds('bytes', n_bytes, 'memory_bytes')}; "
                             f"{advice}")

    def lines(self, stream: IO[AnyStr], where: str, start: int = 1) -> Iterator[tuple[int, AnyStr]]:
        """Yield ``(line_number, line)`` from ``stream``, refusing a line longer than ``max_line_bytes``
        before it is read whole (a newline-free file of gigabytes costs one line's worth of memory)."""
        no = start
        while line := stream.readline(self.max_line_bytes + 1):
            if len(line) > self.max_line_bytes:
                raise ValueError(f"{where}, line {no}: longer than max_line_bytes={self.max_line_bytes:,}"
                                 + (f" (set {self.setting_prefix}MAX_LINE_BYTES to change it)"
                                    if self.setting_prefix else ""))
            yield no, line
            no += 1

    def labels(self, stream: IO[bytes], where: str) -> Iterator[str]:
        """The labels of a UTF-8 text stream, one per line (line ends dropped), read with bounded lines."""
        text = io.TextIOWrapper(stream, encoding="utf-8", newline=None)
        no = 0
        try:
            for no, line in self.lines(text, where):  # noqa: B007 - `no` names the line of a decoding error
                yield line.rstrip("\n")
        except UnicodeDecodeError:
            raise ValueError(f"{where}, line {no + 1}: not UTF-8 text; labels are UTF-8, one per line") from None
        finally:
            text.detach()
