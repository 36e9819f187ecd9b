"""Delimited text (CSV/TSV) of non-negative numbers, parsed in row blocks of bounded size."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from distnmf.ingest.limits import IngestLimits

CSV_BLOCK_BYTES = 8 * 2**20


class CsvNumberReader:
    """Parse a delimited text file of non-negative numbers in row blocks of bounded size.

    Attributes ``n_cols``, ``col_labels`` (from a header, else None) and ``delimiter`` are
    known after construction; ``blocks()`` yields ``(block, row_labels)`` with ``block`` a
    float32 array of shape (rows, n_cols), of at most ``block_rows`` rows and about 8 MiB of
    text. Lines longer than ``limits.max_line_bytes`` are refused before they are read whole,
    and the shape is checked against ``limits`` as rows arrive. Errors name the file, line and
    column.
    """

    def __init__(self, path: Path, *, delimiter: str | None = None, header: bool | None = None,
                 index: bool = False, block_rows: int | None = None, limits: IngestLimits | None = None) -> None:
        self.path = path
        self.index = index
        self.limits = limits or IngestLimits()
        self.blank_lines = 0
        first_no, first = self._first_line()
        self.delimiter = delimiter if delimiter is not None else _guess_delimiter(path, first)
        cells = _split(first, self.delimiter)
        data_cells = cells[1:] if index else cells
        if not data_cells:
            raise ValueError(f"{path}, line {first_no}: no data columns"
                             + (" after the index column" if index else ""))
        is_header = header if header is not None else not all(_is_number(c) for c in data_cells)
        self.n_cols = len(data_cells)
        self.limits.check_shape(1, self.n_cols, self.n_cols, f"{path}, line {first_no},")
        self.col_labels = [c.strip().strip('"') for c in data_cells] if is_header else None
        self._skip_first = is_header
        self.block_rows = block_rows or CSV_BLOCK_BYTES

    def _first_line(self) -> tuple[int, str]:
        with open(self.path, encoding="utf-8-sig") as f:
            for no, line in self.limits.lines(f, str(self.path)):
                if line.strip():
                    return no, line.rstrip("\r\n")
        raise ValueError(f"{self.path} has no data: the file is empty or blank")

    def blocks(self) -> Iterator[tuple[np.ndarray, list[str]]]:
        lines: list[str] = []
        numbers: list[int] = []
        text_size = n_rows = 0
        skip = self._skip_first
        with open(self.path, encoding="utf-8-sig") as f:
            for no, line in self.limits.lines(f, str(self.path)):
                if not line.strip():
                    self.blank_lines += 1
                    continue
                if skip:
                    skip = False
                    continue
                lines.append(line)
                numbers.append(no)
                text_size += len(line)
                if len(lines) >= self.block_rows or text_size >= CSV_BLOCK_BYTES:
                    n_rows += len(lines)
                    self.limits.check_shape(n_rows, self.n_cols, n_rows * self.n_cols, f"{self.path}, line {no},")
                    yield self._parse(lines, numbers)
                    lines, numbers, text_size = [], [], 0
        if lines:
            n_rows += len(lines)
            self.limits.check_shape(n_rows, self.n_cols, n_rows * self.n_cols, f"{self.path}, line {numbers[-1]},")
            yield self._parse(lines, numbers)

    def _parse(self, lines: list[str], numbers: list[int]) -> tuple[np.ndarray, list[str]]:
        labels: list[str] = []
        if self.index:
            pairs = [_split_once(line, self.delimiter) for line in lines]
            labels = [p[0].strip().strip('"') for p in pairs]
            lines = [p[1] for p in pairs]
        try:
            block = np.loadtxt(io.StringIO("".join(lines)), delimiter=self.delimiter, dtype=np.float64,
                               ndmin=2, comments=None, quotechar='"')
        except ValueError:
            self._raise_bad_cell(lines, numbers)
            raise
        if block.shape != (len(lines), self.n_cols):
            self._raise_bad_cell(lines, numbers)
            raise ValueError(f"{self.path}, lines {numbers[0]}-{numbers[-1]}: do not parse as a "
                             f"table of {self.n_cols} columns")
        bad = ~np.isfinite(block) | (block < 0)
        if bad.any():
            r, c = (int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
            kind = "negative" if np.isfinite(block[r, c]) else "non-finite"
            raise ValueError(f"{self.path}, line {numbers[r]}, column {c + 1 + self.index}: "
                             f"{kind} value {float(block[r, c])!r}; NMF needs finite, non-negative numbers")
        return block.astype(np.float32), labels

    def _raise_bad_cell(self, lines: list[str], numbers: list[int]) -> None:
        for line, no in zip(lines, numbers):
            cells = _split(line.rstrip("\r\n"), self.delimiter)
            if len(cells) != self.n_cols:
                raise ValueError(f"{self.path}, line {no}: {len(cells) + self.index} columns, "
                                 f"expected {self.n_cols + self.index} (as on the first line)")
            for j, cell in enumerate(cells):
                if not _is_number(cell):
                    raise ValueError(f"{self.path}, line {no}, column {j + 1 + self.index}: "
                                     f"{cell.strip()!r} is not a number")


def _guess_delimiter(path: Path, first_line: str) -> str | None:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix in (".tsv", ".tab"):
        return "\t"
    for candidate in ("\t", ",", ";"):
        if candidate in first_line:
            return candidate
    return None


def _split(line: str, delimiter: str | None) -> list[str]:
    return line.split(delimiter) if delimiter is not None else line.split()


def _split_once(line: str, delimiter: str | None) -> tuple[str, str]:
    parts = line.split(delimiter, 1) if delimiter is not None else line.split(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (parts[0], "")


def _is_number(cell: str) -> bool:
    try:
        float(cell.strip().strip('"'))
    except ValueError:
        return False
    return True
