"""Pictures of a factorization: component images, originals vs reconstructions, error curves.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot global state, safe
in threads and servers); plain image grids with Pillow. Every function writes its PNG
atomically (a temporary name, then ``os.replace``) and returns the path.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from distnmf import storage
from distnmf.factors import Factors
from distnmf.storage import atomic_path
from distnmf.store import Matrix, open_matrix

MIN_TILE_PIXELS = 128
DPI = 100


# --------------------------------------------------------------------------- pure helpers


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale non-negative values to 0..255 by their maximum (an all-zero array stays black)."""
    values = np.asarray(values, dtype=np.float32)
    top = float(values.max()) if values.size else 0.0
    scaled = values / top if top > 0 else np.zeros_like(values)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def tile_scale(image_shape: Sequence[int], min_pixels: int = MIN_TILE_PIXELS) -> int:
    """Integer upscaling so the shorter side of a tile is at least ``min_pixels``."""
    return max(1, math.ceil(min_pixels / max(1, min(image_shape[:2]))))


def grid_layout(n: int, n_cols: int | None = None) -> tuple[int, int]:
    """(rows, columns) of a near-square grid holding ``n`` tiles."""
    cols = n_cols or math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _image_shape_of(factors: Factors) -> tuple[int, int]:
    shape = factors.image_shape
    if not shape:
        raise ValueError(f"{factors.path} has no image_shape: its rows are not images (ingest images with "
                         f"'distnmf ingest images' to record the shape)")
    if len(shape) != 2 or shape[0] * shape[1] != factors.shape[1]:
        raise ValueError(f"image_shape {tuple(shape)} is not a 2-D (height, width) matching the "
                         f"{factors.shape[1]} columns of {factors.path}")
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------- writing


def _save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        image.save(tmp, format="PNG")
    return path


def _save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite=True) as tmp:
        FigureCanvasAgg(fig).print_png(str(tmp))
    return path


# --------------------------------------------------------------------------- component images


def component_image(factors: Factors, component: int, path: str | os.PathLike, scale: int | None = None) -> Path:
    """PNG of ``H[component]`` reshaped to the image shape (grayscale, scaled by its maximum)."""
    h, w = _image_shape_of(factors)
    if not 0 <= component < factors.n_components:
        raise ValueError(f"component must be in 0..{factors.n_components - 1}, got {component}")
    scale = scale or tile_scale((h, w))
    tile = Image.fromarray(to_uint8(factors.H[component].reshape(h, w)), mode="L")
    return _save_image(tile.resize((w * scale, h * scale), Image.Resampling.NEAREST), path)


def image_png(values: np.ndarray, image_shape: Sequence[int], scale: int | None = None) -> bytes:
    """PNG bytes of a vector of ``prod(image_shape)`` values (a row of X, say) as a grayscale picture."""
    h, w = int(image_shape[0]), int(image_shape[1])
    scale = scale or tile_scale((h, w))
    tile = Image.fromarray(to_uint8(np.asarray(values, dtype=np.float32)[: h * w].reshape(h, w)), mode="L")
    buffer = io.BytesIO()
    tile.resize((w * scale, h * scale), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def component_images(factors: Factors, out_dir: str | os.PathLike, scale: int | None = None) -> list[Path]:
    """One PNG per component, ``out_dir/component_000.png`` ...; returns the paths."""
    out_dir = Path(out_dir)
    return [component_image(factors, c, out_dir / f"component_{c:03d}.png", scale) for c in range(factors.n_components)]


def component_grid(factors: Factors, path: str | os.PathLike, n_cols: int | None = None,
                   scale: int | None = None, pad: int = 2) -> Path:
    """All components as one grayscale grid (white gaps of ``pad`` pixels), row-major."""
    h, w = _image_shape_of(factors)
    scale = scale or max(1, tile_scale((h, w), 64))
    tiles = [to_uint8(row.reshape(h, w)) for row in factors.H]
    rows, cols = grid_layout(len(tiles), n_cols)
    th, tw = h * scale, w * scale
    canvas = Image.new("L", (cols * tw + (cols + 1) * pad, rows * th + (rows + 1) * pad), color=255)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        image = Image.fromarray(tile, mode="L").resize((tw, th), Image.Resampling.NEAREST)
        canvas.paste(image, (pad + c * (tw + pad), pad + r * (th + pad)))
    return _save_image(canvas, path)


# --------------------------------------------------------------------------- figures


def reconstruction_plot(factors: Factors, matrix: Matrix | str | os.PathLike, rows: Sequence[int],
                        path: str | os.PathLike) -> Path:
    """Original rows of X next to their reconstructions ``W_i H``.

    Image data: one figure row per chosen row, original and reconstruction side by side.
    Other data: one panel per chosen row with both as lines over the columns.
    Figure size: 4 x 2 inches per row for images, 8 x 2.5 for others (at 100 dpi).
    """
    matrix = matrix if isinstance(matrix, Matrix) else open_matrix(matrix)
    if tuple(matrix.shape) != tuple(factors.shape):
        raise ValueError(f"matrix shape {matrix.shape} differs from the factors' shape {factors.shape}")
    rows = [int(r) for r in rows]
    if not rows or not all(0 <= r < factors.shape[0] for r in rows):
        raise ValueError(f"rows must be a non-empty list of indices in 0..{factors.shape[0] - 1}, got {rows}")
    H = factors.H
    originals = [_dense_row(matrix.read_rows(r, r + 1)) for r in rows]
    recons = [(factors.read_W(r, r + 1) @ H).ravel() for r in rows]
    labels = factors.row_labels
    names = [str(labels[r]) if labels is not None else f"row {r}" for r in rows]
    if factors.image_shape:
        h, w = _image_shape_of(factors)
        fig = Figure(figsize=(4, 2 * len(rows)), dpi=DPI)
        axes = fig.subplots(len(rows), 2, squeeze=False)
        for (ax_o, ax_r), orig, rec, name in zip(axes, originals, recons, names):
            top = max(float(orig.max()), float(rec.max()), 1e-12)
            for ax, values, title in ((ax_o, orig, f"{name}: original"), (ax_r, rec, "reconstruction")):
                ax.imshow(values.reshape(h, w), cmap="gray", vmin=0, vmax=top)
                ax.set_title(title, fontsize=8)
                ax.axis("off")
    else:
        fig = Figure(figsize=(8, 2.5 * len(rows)), dpi=DPI)
        axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
        for ax, orig, rec, name in zip(axes, originals, recons, names):
            ax.plot(orig, lw=0.8, label="original")
            ax.plot(rec, lw=0.8, label="reconstruction")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("column")
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _save_figure(fig, path)


def _dense_row(row: np.ndarray | sp.sparray) -> np.ndarray:
    dense = sp.csr_array(row).toarray() if sp.issparse(row) else np.asarray(row)
    return dense.ravel().astype(np.float32)


def error_curve(errors: Sequence[float] | Factors, path: str | os.PathLike) -> Path:
    """Relative error against iteration (log scale), from a fit's ``error_history``. 6 x 4 inches."""
    history = errors.error_history if isinstance(errors, Factors) else list(errors)
    if not history:
        raise ValueError("no error history to plot (the fit recorded no iterations)")
    fig = Figure(figsize=(6, 4), dpi=DPI)
    ax = fig.subplots()
    ax.plot(np.arange(1, len(history) + 1), history, marker="." if len(history) < 50 else None)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative error ‖X − WH‖ / ‖X‖")
    ax.set_title(f"convergence: {history[-1]:.4g} after {len(history)} iterations", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)


def elbow_plot(sweep: Sequence[dict], path: str | os.PathLike) -> Path:
    """Reconstruction error against rank from :func:`distnmf.rank.rank_sweep`. 6 x 4 inches."""
    if not sweep:
        raise ValueError("the sweep is empty: nothing to plot")
    points = sorted(sweep, key=lambda r: r["n_components"])
    ks = [r["n_components"] for r in points]
    relative = [r.get("relative_error") for r in points]
    use_relative = all(v is not None for v in relative)
    values: list[float] = ([float(v) for v in relative if v is not None] if use_relative
                           else [r["reconstruction_err"] for r in points])
    fig = Figure(figsize=(6, 4), dpi=DPI)
    ax = fig.subplots()
    ax.plot(ks, values, marker="o")
    for k, v in zip(ks, values):
        ax.annotate(f"{v:.3g}", (k, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xticks(ks)
    ax.set_xlabel("rank (n_components)")
    ax.set_ylabel("relative error ‖X − WH‖ / ‖X‖" if use_relative else "reconstruction error")
    ax.set_title("error against rank: pick the elbow", fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, path)


def topics_plot(factors: Factors, path: str | os.PathLike, top: int = 8) -> Path:
    """Bar charts of each component's ``top`` heaviest columns (with labels): the "topics".
    Grid of 3 x 2.4-inch panels."""
    from distnmf.analysis import top_components

    rows, cols = grid_layout(factors.n_components, min(4, factors.n_components))
    fig = Figure(figsize=(3 * cols, 2.4 * rows), dpi=DPI)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for c, ax in enumerate(axes):
        if c >= factors.n_components:
            ax.axis("off")
            continue
        hits = top_components(factors, c, top=top)["columns"][::-1]
        ax.barh(range(len(hits)), [h.score for h in hits])
        ax.set_yticks(range(len(hits)), [h.label if h.label is not None else str(h.index) for h in hits], fontsize=7)
        ax.set_title(f"component {c}", fontsize=9)
        ax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    return _save_figure(fig, path)


def plot_all(factors: Factors, out_dir: str | os.PathLike, matrix: Matrix | str | os.PathLike | None = None,
             n_rows: int = 4) -> dict[str, Path | list[Path]]:
    """Every picture that applies to these factors, written into ``out_dir``.

    Images (``image_shape`` known): ``components/component_###.png`` and ``components.png``;
    otherwise ``topics.png``. With an error history: ``convergence.png``. With the source
    matrix (``matrix`` or ``attrs["source"]`` if it still exists): ``reconstruction.png`` of
    the first ``n_rows`` rows. Returns ``{name: path or [paths]}``.
    """
    out_dir = Path(out_dir)
    written: dict[str, Path | list[Path]] = {}
    if factors.image_shape:
        written["components"] = component_images(factors, out_dir / "components")
        written["grid"] = component_grid(factors, out_dir / "components.png")
    else:
        written["topics"] = topics_plot(factors, out_dir / "topics.png")
    if factors.error_history:
        written["convergence"] = error_curve(factors, out_dir / "convergence.png")
    source = matrix if matrix is not None else factors.attrs.get("source")
    if source is not None and (isinstance(source, Matrix) or storage.exists(source)):
        rows = list(range(min(n_rows, factors.shape[0])))
        written["reconstruction"] = reconstruction_plot(factors, source, rows, out_dir / "reconstruction.png")
    return written


def cv_rank_plot(report: Any, path: str | os.PathLike) -> Path:
    """Held-out and training RMSE against rank from :func:`distnmf.select_rank` (mean, and the
    range over replicates; log scale), with the best and the one-standard-error ranks. 6 x 4 inches."""
    ks = report.ks
    fig = Figure(figsize=(6, 4), dpi=DPI)
    ax = fig.subplots()
    for values, label, marker in ((report.test_rmse, "held-out entries", "o"),
                                  (report.train_rmse, "training entries", "s")):
        mean = values.mean(axis=1)
        spread = np.vstack([mean - values.min(axis=1), values.max(axis=1) - mean])
        ax.errorbar(ks, mean, yerr=spread, marker=marker, capsize=3, label=label)
    ax.set_yscale("log")
    ax.axvline(report.best_k, color="tab:green", linestyle="--", alpha=0.7, label=f"best k = {report.best_k}")
    if report.one_se_k != report.best_k:
        ax.axvline(report.one_se_k, color="tab:gray", linestyle=":", label=f"one-SE k = {report.one_se_k}")
    ax.set_xticks(ks)
    ax.set_xlabel("rank (n_components)")
    ax.set_ylabel("RMSE (log scale)")
    ax.set_title(f"cross-validated rank: {report.test_fraction:.0%} of entries held out, "
                 f"{report.test_rmse.shape[1]} replicates", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_figure(fig, path)
