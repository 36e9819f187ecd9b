"""Where the service keeps things: the one owner of the data directory's layout.

```
<data_dir>/distnmf.sqlite            matrix and job records
<data_dir>/distnmf.lock              held by the one service using the directory (its process id inside)
<data_dir>/uploads/<matrix>.<ext>    an upload, until it is ingested
<data_dir>/matrices/<matrix>.zarr    stores the service ingested (removed with their record)
<data_dir>/factors/<job>.zarr        a succeeded job's W, H, labels and error history
<data_dir>/checkpoints/<job>.zarr    a running job's last durable iterate (resumed after a restart)
<data_dir>/plots/<job>/<name>.png    pictures drawn on request, kept
<data_dir>/<anything else>           stores and files registered by path
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDir:
    """Paths under the service's data directory ``root``; matrix records hold paths relative to it."""

    root: Path

    @property
    def sqlite(self) -> Path:
        return self.root / "distnmf.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / "distnmf.lock"

    def upload(self, matrix_id: str, suffix: str) -> Path:
        return self.root / "uploads" / f"{matrix_id}{suffix}"

    def ingested(self, matrix_id: str) -> Path:
        return self.root / "matrices" / f"{matrix_id}.zarr"

    def factors(self, job_id: str) -> Path:
        return self.root / "factors" / f"{job_id}.zarr"

    def checkpoint(self, job_id: str) -> Path:
        return self.root / "checkpoints" / f"{job_id}.zarr"

    def plot(self, job_id: str, name: str) -> Path:
        return self.root / "plots" / job_id / f"{name}.png"

    def path(self, relative: str) -> Path:
        """The path of a matrix record (relative to the data directory)."""
        return self.root / relative

    def relative(self, path: Path) -> str:
        """What a matrix record holds for ``path``, a path inside the data directory."""
        return path.resolve().relative_to(self.root.resolve()).as_posix()
