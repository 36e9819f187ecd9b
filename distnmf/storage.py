"""Where stores live: a local path, or an fsspec URL such as ``s3://bucket/prefix/tags.zarr``.

A *location* is a :class:`pathlib.Path` for local stores and a ``str`` URL for object stores
(``s3://``, ``gs://``, ``az://``, ``memory://``, ... — any protocol fsspec knows). Zarr opens both.

Credentials and endpoints come only from the storage library's own configuration: for S3,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_ENDPOINT_URL`` / ``~/.aws``, or fsspec's
``FSSPEC_S3_*`` variables. URLs carrying credentials (``s3://key:secret@bucket``) are refused, so
no secret can reach a log line, an error message or a job record.

Atomic publication (:func:`atomic_path`), the one home of "writes are atomic":

- local paths: the store is written to a hidden temporary sibling and renamed into place;
- URLs (no rename on object stores): the store is written under a hidden temporary sibling
  prefix ``.NAME.tmp-XXXXXXXX``; publishing copies its objects to the final prefix server-side
  (S3 ``CopyObject``: no data passes through this process), the root metadata object
  (``zarr.json``) **last**, then deletes the temporary prefix. A store is *published* when its
  root metadata exists, and readers only open published stores (Zarr cannot open a group
  without it), so a reader sees the old store, no store, or the complete new one — never a
  mixture. Replacing a store first deletes the old root metadata (unpublishing it), then the
  old objects. A crash leaves at most an unpublished final prefix and a hidden temporary one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

Location = Path | str
# Objects whose presence makes a store readable, copied last on publication: Zarr's root metadata,
# or the meta.json of a plain directory of files (the similarity index).
ROOT_METADATA = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata", "meta.json")


def is_url(location: str | os.PathLike) -> bool:
    """True for ``scheme://...`` locations other than ``file://``."""
    text = os.fspath(location)
    return "://" in text and not text.startswith("file://")


def as_location(location: str | os.PathLike) -> Location:
    """A local ``Path`` or a normalised URL string (no trailing slash).

    Raises ``ValueError`` for a URL with credentials in it: configure them in the environment.
    """
    text = os.fspath(location)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    if not is_url(text):
        return Path(text)
    parts = urlsplit(text)
    if "@" in parts.netloc:
        raise ValueError(f"storage URLs must not carry credentials ({parts.scheme}://<user>@...); configure "
                         f"them in the storage library's environment (e.g. AWS_ACCESS_KEY_ID) instead")
    return text.rstrip("/")


def join(location: str | os.PathLike, *parts: str) -> Location:
    """``location/part/...`` for paths and URLs alike."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.joinpath(*parts)
    return "/".join([location, *(p.strip("/") for p in parts)])


def name_of(location: str | os.PathLike) -> str:
    """The last component of a location (``tags.zarr``)."""
    location = as_location(location)
    return location.name if isinstance(location, Path) else location.rsplit("/", 1)[-1]


def sibling(location: str | os.PathLike, name: str) -> Location:
    """A location named ``name`` in the same folder / prefix as ``location``."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.with_name(name)
    return f"{location.rsplit('/', 1)[0]}/{name}"


def canonical(location: str | os.PathLike) -> str:
    """One spelling per location (absolute, symlinks resolved for paths): for cache keys."""
    location = as_location(location)
    return str(location.resolve()) if isinstance(location, Path) else location


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write one file (creating local parent folders)."""
    location = as_location(location)
    if isinstance(location, Path):
        location.parent.mkdir(parents=True, exist_ok=True)
        location.write_bytes(data)
    else:
        fs, path = filesystem(location)
        fs.pipe_file(path, data)


def read_bytes(location: str | os.PathLike) -> bytes:
    """Read one file; ``FileNotFoundError`` when absent."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.read_bytes()
    fs, path = filesystem(location)
    return fs.cat_file(path)


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem of a URL and the path inside it (credentials from its config)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()  # listings cached by an earlier call may predate writes made through Zarr
    return fs, path


def exists(location: str | os.PathLike) -> bool:
    """Whether something is at a local path, or a *published* store (or any object) at a URL."""
    location = as_location(location)
    if isinstance(location, Path):
        return location.exists()
    fs, path = filesystem(location)
    try:
        children = {key.rsplit("/", 1)[-1] for key in fs.ls(path, detail=False)}  # one LIST request
    except FileNotFoundError:
        return False
    return bool(children & set(ROOT_METADATA)) or fs.isfile(path)


def remove(location: str | os.PathLike) -> None:
    """Delete a store (unpublishing it first on object stores); missing is fine."""
    location = as_location(location)
    if isinstance(location, Path):
        if location.is_dir():
            shutil.rmtree(location, ignore_errors=True)
        else:
            location.unlink(missing_ok=True)
        return
    fs, path = filesystem(location)
    _unpublish(fs, path)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def version_token(location: str | os.PathLike) -> str:
    """Changes whenever the store at ``location`` is republished (for Dask task names)."""
    location = as_location(location)
    if isinstance(location, Path):
        stat = location.stat()  # a republished store is a new directory renamed into place
        return f"{stat.st_ino}-{stat.st_mtime_ns}"
    fs, path = filesystem(location)
    info = fs.info(f"{path}/zarr.json")
    return str(info.get("ETag") or info.get("LastModified") or info.get("mtime") or info.get("size"))


def temporary_sibling(location: str | os.PathLike) -> Location:
    """A hidden, unique sibling of ``location`` to write a store into before publishing it."""
    return sibling(location, f".{name_of(location)}.tmp-{uuid.uuid4().hex[:8]}")


def _unpublish(fs: AbstractFileSystem, path: str) -> None:
    for name in ROOT_METADATA:
        if fs.exists(f"{path}/{name}"):
            fs.rm_file(f"{path}/{name}")


def publish(tmp: str | os.PathLike, location: str | os.PathLike, overwrite: bool) -> None:
    """Make the completed store (or file) at ``tmp`` appear as ``location`` (see the module docstring)."""
    tmp, location = as_location(tmp), as_location(location)
    if exists(location) and not overwrite:
        raise FileExistsError(f"{location} already exists; pass overwrite=True to replace it")
    if isinstance(location, Path):
        if location.exists() and (Path(tmp).is_dir() or location.is_dir()):
            old = location.with_name(f".{location.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(location, old)
            os.rename(tmp, location)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, location)
        return
    fs, src = filesystem(str(tmp))
    _, dst = filesystem(location)
    remove(location)
    if fs.isfile(src):  # a single object: a server-side copy is atomic
        fs.copy(src, dst)
        fs.rm_file(src)
        return
    objects = [key for key in fs.find(src) if key != src]
    roots = {f"{src}/{name}" for name in ROOT_METADATA}
    body = [key for key in objects if key not in roots]
    if body:
        fs.copy(body, [dst + key[len(src):] for key in body])
    for key in (k for k in objects if k in roots):  # the root metadata last: now it is published
        fs.copy(key, dst + key[len(src):])
    fs.rm(src, recursive=True)


@contextmanager
def atomic_path(location: str | os.PathLike, overwrite: bool = False) -> Iterator[Location]:
    """Yield a temporary sibling of ``location`` to write a store (directory / prefix) or a file
    into; on success publish it as ``location`` (:func:`publish`), on any exception remove it, so
    nothing half-written is ever visible under ``location``. An existing ``location`` without
    ``overwrite`` fails before any writing."""
    location = as_location(location)
    if not overwrite and exists(location):
        raise FileExistsError(f"{location} already exists; pass overwrite=True to replace it")
    if isinstance(location, Path):
        location.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(location)
    try:
        yield tmp
        publish(tmp, location, overwrite)
    except BaseException:
        remove(tmp)
        raise
