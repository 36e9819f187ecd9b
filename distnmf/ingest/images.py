"""Image folders into a dense matrix store: one row per image, grayscale, resized, in [0, 1].

Every file under the folder (recursively; names starting with ``.`` are ignored) is offered
to Pillow. Files that do not decode are skipped and counted, never fatal. Rows follow the
sorted relative paths, which become the row labels; ``attrs["image_shape"] = [h, w]`` lets
components be shown as images. Decoding runs in batches on the active Dask client when there
is one (workers must see the same folder, e.g. a shared file system), else in this process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from distnmf.ingest.report import IngestReport, SkipLog, Stopwatch, progress
from distnmf.matrixwriter import MatrixWriter, default_chunk_rows
from distnmf.runner import ClientArg, make_runner

RESAMPLE = Image.Resampling.LANCZOS
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")  # decoders offered a file, nothing else
MAX_PIXELS = 64 * 2**20  # larger images are refused from their header, before decoding


def list_files(folder: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the regular files under ``folder``, sorted; hidden names skipped."""
    root = Path(folder)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        found.extend((rel / name).as_posix() for name in filenames if not name.startswith("."))
    return sorted(found)


def load_image(path: str | os.PathLike, image_shape: tuple[int, int] = (64, 64),
               crop: bool = False) -> np.ndarray:
    """Decode one image to a flat float32 row of shape (h * w,) with values in [0, 1].

    The image is converted to 8-bit grayscale (Pillow mode ``"L"``) and resized to
    ``image_shape = (h, w)`` with Lanczos resampling: stretched, or with ``crop=True``
    centre-cropped to the target aspect ratio first. Only the :data:`FORMATS` decoders are tried,
    and an image of more than :data:`MAX_PIXELS` pixels is refused from its header. Raises
    whatever Pillow raises for a file that is not a readable image.
    """
    h, w = image_shape
    with Image.open(path, formats=FORMATS) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"{img.width}x{img.height} pixels is more than the {MAX_PIXELS:,} accepted")
        img.draft("L", (w, h))  # JPEG: let the decoder downscale by a power of two first
        gray = img.convert("L")
    if crop:
        gray = ImageOps.fit(gray, (w, h), method=RESAMPLE)
    elif gray.size != (w, h):
        gray = gray.resize((w, h), RESAMPLE)
    return np.asarray(gray, dtype=np.float32).reshape(-1) / np.float32(255)


@dataclass(frozen=True)
class BatchDecoder:
    """Picklable task: decode a batch of relative paths under ``root``.

    Returns ``(rows, labels, failures)``: rows of shape (n_ok, h * w), the relative paths of
    the decoded images, and ``(path, reason)`` for each file that did not decode.
    """

    root: str
    image_shape: tuple[int, int]
    crop: bool

    def __call__(self, paths: Sequence[str]) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        rows: list[np.ndarray] = []
        labels: list[str] = []
        failures: list[tuple[str, str]] = []
        for rel in paths:
            try:
                rows.append(load_image(os.path.join(self.root, rel), self.image_shape, self.crop))
            except Exception as exc:  # any decode failure skips the file: Pillow raises many types
                failures.append((rel, f"{type(exc).__name__}: {exc}"))
                continue
            labels.append(rel)
        n_pixels = self.image_shape[0] * self.image_shape[1]
        block = np.stack(rows) if rows else np.zeros((0, n_pixels), dtype=np.float32)
        return block, labels, failures


def ingest_images(folder: str | os.PathLike, dest: str | os.PathLike, *,
                  image_shape: tuple[int, int] = (64, 64), crop: bool = False, batch_size: int = 256,
                  client: ClientArg = None, compression: str | None = None, overwrite: bool = False,
                  show_progress: bool | None = None) -> IngestReport:
    """Write every image under ``folder`` as one row of the dense store ``dest``.

    Parameters
    ----------
    folder : directory searched recursively.
    dest : path of the store to create; X has shape (n_images, h * w), float32 in [0, 1].
    image_shape : (h, w) every image is resized to.
    crop : centre-crop to the aspect ratio of ``image_shape`` instead of stretching.
    batch_size : files decoded per task.
    client : a ``distributed.Client``; default the active one if any; ``False`` decodes here.
    compression, overwrite : as for :class:`distnmf.matrixwriter.MatrixWriter`.
    show_progress : progress bar on stderr; default only on a terminal.

    Returns
    -------
    IngestReport whose ``skipped`` lists undecodable files with the reason.

    Raises
    ------
    FileNotFoundError : ``folder`` is not a directory.
    ValueError : the folder holds no file that decodes as an image (no store is left).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {root}")
    h, w = (int(v) for v in image_shape)
    if h < 1 or w < 1:
        raise ValueError(f"image_shape must be two positive sizes (h, w), got {tuple(image_shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    clock = Stopwatch()
    files = list_files(root)
    if not files:
        raise ValueError(f"{root} holds no files: nothing to ingest")
    batches = [files[i:i + batch_size] for i in range(0, len(files), batch_size)]
    decoder = BatchDecoder(str(root), (h, w), crop)
    skipped = SkipLog()
    labels: list[str] = []
    attrs = {"image_shape": [h, w],
             "ingest": {"kind": "images", "source": str(root), "crop": crop}}
    runner = make_runner(client)
    try:
        results = runner.imap("ingest-images-decode", decoder, batches)
        chunk_rows = min(default_chunk_rows(h * w), len(files))
        with MatrixWriter(dest, h * w, chunk_rows=chunk_rows, compression=compression, overwrite=overwrite,
                          attrs=attrs) as writer:
            for block, names, failures in progress(results, total=len(batches), desc=f"decode {root.name}",
                                                   unit="batch", enabled=show_progress):
                if len(names):
                    writer.append(block)
                    labels.extend(names)
                for where, reason in failures:
                    skipped.add(where, reason)
            if not labels:
                examples = "; ".join(f"{p}: {r}" for p, r in skipped.examples[:3])
                raise ValueError(f"{root} holds {len(files):,} files but none is a readable image ({examples})")
            writer.row_labels = labels
        notes = [f"{len(labels):,} images of {len(files):,} files, as {h}x{w} grayscale rows."]
        return IngestReport("images", root, writer.matrix, n_skipped=skipped.count, skipped=skipped.examples,
                            notes=notes, seconds=clock.seconds)
    finally:
        runner.close()
