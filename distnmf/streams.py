"""Binary streams read straight into buffers allocated once (no intermediate ``bytes``)."""

from __future__ import annotations

from typing import Protocol


class Readable(Protocol):
    """A binary stream: a file, a zip member, or zstandard's decompressing reader."""

    def read(self, size: int = ..., /) -> bytes: ...

    def seek(self, offset: int, whence: int = ..., /) -> int: ...

    def readinto(self, buffer: memoryview, /) -> int | None: ...


def fill(stream: Readable, buffer: memoryview) -> int:
    """Read from ``stream`` into ``buffer`` until it is full or the stream ends; returns the bytes
    read (fewer than ``len(buffer)`` when the stream ended early)."""
    filled = 0
    while filled < len(buffer):
        got = stream.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled
