"""Zarr arrays and groups read and written safely: checked access to members, refusal of
codecs and dtypes that could run code (untrusted stores), label arrays, codec choice."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
import zarr
import zarr.codecs

LABEL_CHUNK = 2**16

SAFE_CODECS = frozenset({"bytes", "transpose", "sharding_indexed", "crc32c", "zstd", "blosc", "gzip", "zlib",
                         "bz2", "lzma", "lz4", "vlen-utf8", "delta", "shuffle", "bitround"})
SAFE_DTYPE_KINDS = frozenset("biufUST")  # bool, integers, floats; strings (labels)


def _codec_names(meta: dict[str, Any]) -> list[str]:
    """Names of every codec an array's metadata declares (Zarr v3 ``codecs``, nested sharding
    codecs included; Zarr v2 ``compressor`` and ``filters``)."""
    names: list[str] = []

    def collect(codecs: Any) -> None:
        for codec in codecs or ():
            if isinstance(codec, dict):
                names.append(str(codec.get("name", codec.get("id"))))
                config = codec.get("configuration") or {}
                collect(config.get("codecs"))
                collect(config.get("index_codecs"))
            else:
                names.append(repr(codec))

    collect(meta.get("codecs"))
    collect([meta["compressor"]] if meta.get("compressor") else None)
    collect(meta.get("filters"))
    return names


def check_safe(node: zarr.Array | zarr.Group, where: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless every array in ``node`` (recursively) has a numeric or string
    dtype and only codecs of :data:`SAFE_CODECS`: no ``pickle``/object codec is ever decoded.

    Reads metadata only (no chunk), so it runs before any data of an untrusted store is read.
    """
    try:
        arrays = [("", node)] if isinstance(node, zarr.Array) else [
            (f"/{name}", member) for name, member in node.members(max_depth=None) if isinstance(member, zarr.Array)]
    except Exception as exc:  # zarr raises many types for metadata it cannot parse
        raise ValueError(f"{where} holds array metadata distnmf cannot read ({type(exc).__name__}: {exc})") from None
    for name, array in arrays:
        meta = array.metadata.to_dict()
        unsafe = sorted(set(_codec_names(meta)) - SAFE_CODECS)
        if unsafe:
            raise ValueError(f"{where}{name} uses the codec(s) {', '.join(unsafe)}, which distnmf does not decode; "
                             f"allowed: {', '.join(sorted(SAFE_CODECS))}")
        if np.dtype(array.dtype).kind not in SAFE_DTYPE_KINDS:
            raise ValueError(f"{where}{name} has dtype {array.dtype}; distnmf reads only numeric arrays "
                             f"(and string labels)")


Node = TypeVar("Node", zarr.Array, zarr.Group)


def member(group: zarr.Group, name: str, kind: type[Node]) -> Node:
    """The member ``name`` of ``group``, checked to be a ``kind`` (``zarr.Array`` or ``zarr.Group``).

    Raises ``KeyError`` when it is absent and ``ValueError`` naming it when it is of the other
    kind (a store written by another tool, or corrupted).
    """
    node = group[name]
    if not isinstance(node, kind):
        found = "group" if isinstance(node, zarr.Group) else "array"
        where = str(group.store_path).removeprefix("file://")
        raise ValueError(f"{where}/{name} is a Zarr {found} where a Zarr {kind.__name__.lower()} "
                         f"was expected; the store is not in distnmf's layout")
    return node


def read_array(array: zarr.Array, start: int | None = None, stop: int | None = None) -> np.ndarray:
    """Elements ``start:stop`` (along the first axis) of ``array`` as a numpy array."""
    return np.asarray(array[start:stop])


def compression_codecs(compression: str | None) -> zarr.codecs.BloscCodec | zarr.codecs.ZstdCodec | None:
    """The Zarr compressor of a ``compression`` choice: None (or ``"none"``), ``"lz4"`` (Blosc) or ``"zstd"``."""
    if compression in (None, "none"):
        return None
    if compression == "lz4":
        return zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    if compression == "zstd":
        return zarr.codecs.ZstdCodec(level=3)
    raise ValueError(f"compression must be None, 'lz4' or 'zstd', got {compression!r}")


def write_labels(group: zarr.Group, name: str, labels: Iterable[Any] | None, expected: int) -> None:
    """Write ``expected`` labels (any iterable, stored as str) a chunk at a time: a label stream
    longer than the matrix's axis is refused as soon as it overflows, never held whole."""
    if labels is None:
        return
    if isinstance(labels, np.ndarray) and labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {labels.shape}")
    arr = group.create_array(name, shape=(expected,), dtype=str, chunks=(max(1, min(expected, LABEL_CHUNK)),))
    count = 0
    values = iter(labels)
    while piece := list(itertools.islice(values, LABEL_CHUNK)):
        if count + len(piece) > expected:
            raise ValueError(f"{name} has more than {expected} entries, but the matrix has {expected} along that axis")
        arr[count:count + len(piece)] = np.asarray([str(v) for v in piece], dtype=str)
        count += len(piece)
    if count != expected:
        raise ValueError(f"{name} has {count} entries, but the matrix has {expected} along that axis")


def read_labels(group: zarr.Group, name: str) -> np.ndarray:
    """The label array ``name`` of ``group`` as plain numpy ``str_`` (Zarr returns variable-length
    strings as numpy StringDType)."""
    return np.array(read_array(member(group, name, zarr.Array)).tolist(), dtype=str)


def shrink_to_one_chunk(group: zarr.Group, name: str, length: int) -> None:
    """Rewrite a small array as one chunk of its own size: an uncompressed partial chunk is
    otherwise stored at full chunk size (a tiny matrix would take 16-32 MiB on disk)."""
    old = member(group, name, zarr.Array)
    values = read_array(old)
    chunks = (max(1, length),) + tuple(old.shape[1:])
    new = group.create_array(name, shape=old.shape, chunks=chunks, dtype=old.dtype,
                             compressors=old.compressors or None, fill_value=old.fill_value, overwrite=True)
    if length:
        new[:] = values
