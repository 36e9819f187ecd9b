"""One service per data directory: an exclusive ``flock`` on ``<data_dir>/distnmf.lock``
(:attr:`distnmf_api.layout.DataDir.lock`).

The kernel releases a ``flock`` when its holder exits, however it exits (SIGKILL included),
so a lock file left behind by a dead service never blocks the next one. The file holds the
holder's process id, for the message a second service prints when it is refused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self


class DataDirInUse(OSError):
    """Another live process holds the data directory's lock."""


class DataDirLock:
    """An exclusive lock on the lock file ``path`` of a data directory, held from :meth:`acquire`
    to :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting; raise :class:`DataDirInUse` naming the holder if taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"the data directory {self.path.parent} is in use by another distnmf service "
                f"(process {holder} holds {self.path}); stop that service or set DISTNMF_DATA_DIR "
                "to another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would race with a process taking it)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
