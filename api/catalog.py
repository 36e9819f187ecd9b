"""Matrices known to the service: safe paths under the data directory, ingest, validation."""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any, cast

import zarr

from distnmf import storage
from distnmf.ingest import ingest_array
from distnmf.ingest.limits import IngestLimits
from distnmf.runner import DaskRunner, NoWorkersError
from distnmf.storage import atomic_path
from distnmf.store import Matrix, open_matrix
from distnmf.zarrnodes import write_labels
from distnmf_api.cluster import Cluster
from distnmf_api.errors import ClusterUnavailable, PathRefused, Unprocessable
from distnmf_api.jobstore import JobStore, StoredMatrix
from distnmf_api.layout import DataDir
from distnmf_api.schemas import MatrixFormat
from distnmf_api.tasks import check_rows

VALIDATION_WORKER_TIMEOUT = 10.0  # seconds a registration waits for a worker before answering 503
SUFFIXES = {MatrixFormat.npy: ".npy", MatrixFormat.npz: ".npz", MatrixFormat.mtx: ".mtx", MatrixFormat.csv: ".csv"}


def _plain_relative(relative: str) -> PurePosixPath:
    """``relative`` as a POSIX path that cannot leave the root it is joined to; refused otherwise."""
    if "\x00" in relative or relative.startswith("~"):
        raise PathRefused(f"path {relative!r} is not a plain relative path inside the data directory")
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(relative).is_absolute() or PureWindowsPath(relative).drive:
        raise PathRefused(f"path {relative!r} is absolute; give a path relative to the data directory")
    if ".." in posix.parts:
        raise PathRefused(f"path {relative!r} contains '..'; paths must stay inside the data directory")
    return posix


def _resolve_in_url_root(root: str, relative: str) -> str:
    """The published store ``relative`` (or a full URL inside ``root``) names under a URL root."""
    if storage.is_url(relative):
        if not relative.startswith(root + "/"):
            raise PathRefused("the URL is outside the service's storage root; give a path relative to it")
        relative = relative[len(root) + 1:]
    posix = str(_plain_relative(relative)).strip("/")
    target = storage.join(root, posix)
    if posix in ("", ".") or not storage.exists(target):
        raise PathRefused(f"nothing at {relative!r} in the storage root")
    return str(target)


def resolve_inside(data: DataDir, relative: str) -> storage.Location:
    """The existing location ``relative`` names inside the storage root (the data directory
    unless ``DISTNMF_STORAGE_ROOT``); refused if it could lead outside.

    Absolute paths, ``..`` components and symlinks whose target is outside the root (the path
    itself, a parent, or any entry inside a store directory) are all refused. Under a URL root,
    ``relative`` may also be a full URL inside it.
    """
    if not isinstance(data.store_root, Path):
        return _resolve_in_url_root(data.store_root, relative)
    posix = _plain_relative(relative)
    root = data.store_root.resolve()
    target = (root / posix).resolve()
    if not target.is_relative_to(root):
        raise PathRefused(f"path {relative!r} leads outside the data directory (through a symlink)")
    if not target.exists():
        raise PathRefused(f"nothing at {relative!r} in the data directory")
    if target.is_dir():
        for folder, dirs, files in os.walk(target):
            for name in dirs + files:
                entry = Path(folder, name)
                if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                    raise PathRefused(f"path {relative!r} holds a symlink ({entry.relative_to(root)}) "
                                      f"leading outside the data directory")
    return target


def validate_on_cluster(matrix: Matrix, cluster: Cluster) -> None:
    """Check every row block for negative or non-finite values, in parallel on the cluster."""
    bounds = matrix.row_bounds
    n = len(bounds) - 1
    try:
        runner = DaskRunner(cluster.client, worker_timeout=VALIDATION_WORKER_TIMEOUT)
    except NoWorkersError:
        raise ClusterUnavailable("the Dask scheduler has no workers to validate the matrix on") from None
    checks = runner.map("distnmf-validate", check_rows, [matrix.path] * n, [matrix.is_sparse] * n, bounds[:-1],
                        bounds[1:], [matrix.shape[1]] * n)
    try:
        runner.gather(checks)
    finally:
        runner.release(checks)  # after the first failure, the checks still queued are dropped


def _record(matrix_id: str, name: str, path: str, fmt: MatrixFormat, owned: bool, matrix: Matrix) -> StoredMatrix:
    n_rows, n_cols = matrix.shape
    return StoredMatrix(id=matrix_id, name=name, format=str(fmt), shape=(n_rows, n_cols), nnz=matrix.nnz,
                        density=matrix.nnz / (n_rows * n_cols), is_sparse=matrix.is_sparse,
                        image_shape=list(matrix.image_shape) if matrix.image_shape else None,
                        has_row_labels=matrix.row_labels is not None, has_col_labels=matrix.col_labels is not None,
                        created_at="", path=path, owned=owned)


def register(store: JobStore, cluster: Cluster, data: DataDir, relative: str, fmt: MatrixFormat,
             name: str | None, limits: IngestLimits) -> StoredMatrix:
    """Register a store (or ingest a file) found at ``relative`` inside the data directory."""
    source = resolve_inside(data, relative)
    matrix_id = uuid.uuid4().hex[:16]
    name = name or storage.name_of(source)
    if fmt == MatrixFormat.zarr:
        try:
            matrix = open_matrix(source)
            validate_on_cluster(matrix, cluster)
        except (ValueError, FileNotFoundError) as exc:
            raise Unprocessable(data.redact(str(exc), {source: relative})) from None
        return store.add_matrix(_record(matrix_id, name, data.relative(source), fmt, False, matrix))
    if not isinstance(source, Path):
        raise PathRefused(f"format {fmt} files are read from a local storage root only: upload the file, "
                          f"or store it as Zarr under the storage root")
    if not source.is_file():
        raise PathRefused(f"{relative!r} is not a file; format {fmt} needs a {SUFFIXES[fmt]} file")
    return ingest(store, data, source, fmt, matrix_id, relative, limits, name=name)


def ingest(store: JobStore, data: DataDir, source: Path, fmt: MatrixFormat, matrix_id: str, known_as: str,
           limits: IngestLimits, *, name: str | None = None, row_labels: IO[bytes] | None = None,
           col_labels: IO[bytes] | None = None, image_shape: list[int] | None = None) -> StoredMatrix:
    """Ingest a npy/npz/mtx/csv file into a new store of the service under ``limits``, then record it.

    ``known_as`` is how the client names the file (its upload name or registered path): errors use
    it, never a server path. Label streams are UTF-8 text, one label per line, read as written.
    """
    name = name or known_as
    if fmt == MatrixFormat.zarr:
        raise Unprocessable("a Zarr store cannot be uploaded; copy it into the data directory and register its path")
    final = data.ingested(matrix_id)
    linked = None
    if source.suffix.lower() != SUFFIXES[fmt]:  # the ingest reads the format from the suffix
        linked = source.with_name(f".{source.name}.{uuid.uuid4().hex[:8]}{SUFFIXES[fmt]}")
        os.link(source, linked)
    try:
        with atomic_path(final) as staging:
            try:
                matrix = ingest_array(linked or source, staging, overwrite=True, show_progress=False,
                                      limits=limits).matrix
                _add_metadata(staging, matrix, limits, row_labels, col_labels, image_shape)
            except (ValueError, TypeError, OSError, EOFError, KeyError) as exc:
                names = {linked or source: known_as, source: known_as, staging: "the new store"}
                raise Unprocessable(f"cannot ingest the {fmt} file {known_as!r}: "
                                    f"{data.redact(str(exc), names)}") from None
    finally:
        if linked is not None:
            linked.unlink(missing_ok=True)
    return store.add_matrix(_record(matrix_id, name, data.relative(final), fmt, True, open_matrix(final)))


def _add_metadata(path: storage.Location, matrix: Matrix, limits: IngestLimits, row_labels: IO[bytes] | None,
                  col_labels: IO[bytes] | None, image_shape: list[int] | None) -> None:
    group = zarr.open_group(path, mode="r+")
    if row_labels is not None:
        write_labels(group, "row_labels", limits.labels(row_labels, "row_labels"), matrix.shape[0])
    if col_labels is not None:
        write_labels(group, "col_labels", limits.labels(col_labels, "col_labels"), matrix.shape[1])
    if image_shape is not None:
        size = 1
        for side in image_shape:
            size *= side
        if size != matrix.shape[1]:
            raise ValueError(f"image_shape {image_shape} has {size} pixels but rows have {matrix.shape[1]} columns")
        meta = cast(dict[str, Any], group.attrs["distnmf"])
        group.attrs["distnmf"] = {**meta, "image_shape": list(image_shape)}


def delete(store: JobStore, data: DataDir, matrix: StoredMatrix) -> None:
    """Forget a matrix; stores the service ingested itself are removed from disk."""
    store.delete_matrix(matrix.id)
    if matrix.owned:
        storage.remove(data.path(matrix.path))
