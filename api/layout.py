"""Where the service keeps things: the one owner of the data directory's layout.

```
<data_dir>/distnmf.sqlite            matrix and job records
<data_dir>/distnmf.lock              held by the one service using the directory (its process id inside)
<data_dir>/served.generation         touched when factors are deleted: query workers then drop what they hold
<data_dir>/uploads/<matrix>.<ext>    an upload, until it is ingested
<data_dir>/matrices/<matrix>.zarr    stores the service ingested (removed with their record)
<data_dir>/factors/<job>.zarr        a succeeded job's W, H, labels and error history
<data_dir>/checkpoints/<job>.zarr    a running job's last durable iterate (resumed after a restart)
<data_dir>/plots/<job>/<name>.png    pictures drawn on request, kept
<data_dir>/ranks/<job>.json          a rank-selection job's report (table, best_k, one_se_k)
<data_dir>/ranks/<job>.png           its held-out and training RMSE against rank
<data_dir>/<anything else>           stores and files registered by path
```
With ``DISTNMF_STORAGE_ROOT`` (a folder every worker sees, or a URL such as ``s3://bucket/distnmf``),
``matrices/``, ``factors/``, ``checkpoints/`` and the stores registered by path live under it
instead; the SQLite file, uploads in transit, plots and rank reports stay in the data directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from distnmf import storage


@dataclass(frozen=True)
class DataDir:
    """Paths under the service's data directory ``root`` and the storage root ``stores`` (default:
    ``root``); matrix records hold paths relative to ``stores``."""

    root: Path
    stores: storage.Location | None = None

    @property
    def store_root(self) -> storage.Location:
        return self.root if self.stores is None else self.stores

    @property
    def sqlite(self) -> Path:
        return self.root / "distnmf.sqlite"

    @property
    def lock(self) -> Path:
        return self.root / "distnmf.lock"

    @property
    def served_generation(self) -> Path:
        return self.root / "served.generation"

    def upload(self, matrix_id: str, suffix: str) -> Path:
        return self.root / "uploads" / f"{matrix_id}{suffix}"

    def ingested(self, matrix_id: str) -> storage.Location:
        return storage.join(self.store_root, "matrices", f"{matrix_id}.zarr")

    def factors(self, job_id: str) -> storage.Location:
        return storage.join(self.store_root, "factors", f"{job_id}.zarr")

    def checkpoint(self, job_id: str) -> storage.Location:
        return storage.join(self.store_root, "checkpoints", f"{job_id}.zarr")

    def plot(self, job_id: str, name: str) -> Path:
        return self.root / "plots" / job_id / f"{name}.png"

    def rank_report(self, job_id: str) -> Path:
        return self.root / "ranks" / f"{job_id}.json"

    def rank_plot(self, job_id: str) -> Path:
        return self.root / "ranks" / f"{job_id}.png"

    def path(self, relative: str) -> storage.Location:
        """The location of a matrix record (relative to the storage root)."""
        return storage.join(self.store_root, relative)

    def relative(self, location: storage.Location) -> str:
        """What a matrix record holds for ``location``, inside the storage root."""
        root = self.store_root
        if isinstance(root, Path):
            return Path(location).resolve().relative_to(root.resolve()).as_posix()
        return str(location).removeprefix(root + "/")

    def redact(self, text: str, names: Mapping[storage.Location, str] | None = None) -> str:
        """``text`` without server paths, for a response: each path of ``names`` becomes the name the
        client knows it by, then any other path under the data directory or the storage root
        becomes relative to it."""
        for path, name in sorted((names or {}).items(), key=lambda item: -len(str(item[0]))):
            text = text.replace(str(path), name)
        roots = {str(self.root.resolve()), str(self.root.absolute()), str(self.root), str(self.store_root)}
        for root in sorted(roots, key=len, reverse=True):
            text = re.sub(re.escape(root.rstrip("/")) + "/?", "", text)
        return text
