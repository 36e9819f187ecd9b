"""Dense images mixed from planted smooth blobs (optionally near-duplicate groups)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from distnmf.ingest.report import progress
from distnmf.matrixwriter import MatrixWriter, default_chunk_rows
from distnmf.store import Matrix
from distnmf.synth.blocks import PIXELS, block_range, make_labels, n_blocks, seeded_rng


@dataclass(frozen=True)
class PlantedPixels:
    """A synthetic image corpus and its ground truth.

    Attributes
    ----------
    matrix : the dense store, shape (n_images, h * w), values in [0, 1].
    parts : of shape (n_parts, h * w), the planted blobs (peak value 1).
    groups : of shape (near_duplicates, group_size), row indices of each near-duplicate group.
    """

    matrix: Matrix
    parts: np.ndarray
    groups: np.ndarray


def _blobs(rng: np.random.Generator, n_parts: int, h: int, w: int) -> np.ndarray:
    """Smooth non-negative parts: rotated 2-D Gaussian bumps, shape (n_parts, h * w)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    parts = np.empty((n_parts, h * w), dtype=np.float32)
    for k in range(n_parts):
        cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
        sy, sx = rng.uniform(0.05, 0.2) * h, rng.uniform(0.05, 0.2) * w
        angle = rng.uniform(0, np.pi)
        dy, dx = y - cy, x - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        blob = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)).ravel()
        parts[k] = blob / blob.max()
    return parts


def pixel_corpus(path: str | os.PathLike, n_images: int, image_shape: tuple[int, int] = (64, 64), *,
                 n_parts: int = 16, parts_per_image: float = 3.0, noise: float = 0.02,
                 near_duplicates: int = 0, group_size: int = 3, duplicate_noise: float = 0.01,
                 seed: int = 0, labels: bool = True, compression: str | None = None,
                 overwrite: bool = False, show_progress: bool | None = None) -> PlantedPixels:
    """Write a dense corpus of shape (n_images, h * w) mixed from ``n_parts`` planted blobs.

    Image i is ``clip(c_i @ parts + noise * U(0, 1), 0, 1)`` with c_i non-negative, about
    ``parts_per_image`` non-zero (Gamma-distributed) coefficients. ``near_duplicates`` groups
    of ``group_size`` rows share one coefficient vector and differ only by ``duplicate_noise``.
    Generated block by block, so the corpus may be larger than memory; ``labels=False`` skips
    the row labels (``img0000000...``) for very large corpora. ``attrs["image_shape"]`` is set.
    """
    h, w = (int(v) for v in image_shape)
    if n_images < 1 or n_parts < 1 or h < 1 or w < 1:
        raise ValueError("n_images, n_parts and both image_shape sizes must be >= 1")
    if near_duplicates * group_size > n_images:
        raise ValueError(f"near_duplicates * group_size = {near_duplicates * group_size} exceeds n_images={n_images}")
    rng = seeded_rng(seed, PIXELS)
    parts = _blobs(rng, n_parts, h, w)
    members = rng.choice(n_images, size=near_duplicates * group_size, replace=False)
    groups = np.sort(members.reshape(near_duplicates, group_size), axis=1)
    group_coef = sparse_coefficients(rng, near_duplicates, n_parts, parts_per_image + 1)
    group_of = dict(zip(groups.ravel().tolist(), np.repeat(np.arange(near_duplicates), group_size).tolist()))
    attrs = {"image_shape": [h, w], "synth": {"kind": "pixel_corpus", "seed": seed, "n_parts": n_parts}}
    chunk_rows = min(n_images, default_chunk_rows(h * w))
    with MatrixWriter(path, h * w, chunk_rows=chunk_rows, compression=compression, overwrite=overwrite,
                      row_labels=make_labels("img", n_images) if labels else None, attrs=attrs) as writer:
        for b in progress(range(n_blocks(n_images)), total=n_blocks(n_images), desc="synth pixels",
                          unit="block", enabled=show_progress):
            start, stop = block_range(b, n_images)
            block_rng = seeded_rng(seed, PIXELS, b)
            coef = sparse_coefficients(block_rng, stop - start, n_parts, parts_per_image)
            level = np.full((stop - start, 1), noise, dtype=np.float32)
            for row in range(start, stop):
                if row in group_of:
                    coef[row - start] = group_coef[group_of[row]]
                    level[row - start] = duplicate_noise
            images = coef @ parts + level * block_rng.random((stop - start, h * w), dtype=np.float32)
            writer.append(np.clip(images, 0.0, 1.0, out=images))
    return PlantedPixels(writer.matrix, parts, groups)


def sparse_coefficients(rng: np.random.Generator, n: int, n_parts: int, active: float) -> np.ndarray:
    """Non-negative mixing weights of shape (n, n_parts), about ``active`` non-zero per row."""
    mask = rng.random((n, n_parts)) < min(1.0, active / n_parts)
    mask[np.arange(n), rng.integers(n_parts, size=n)] = True
    return (mask * rng.gamma(4.0, 0.1, size=(n, n_parts))).astype(np.float32)
