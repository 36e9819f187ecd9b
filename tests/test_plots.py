"""Pictures: valid PNGs of the expected size, written atomically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from distnmf import plots
from distnmf.factors import save_factors
from distnmf.matrixwriter import save_matrix

IMAGE = (8, 6)
K = 5


@pytest.fixture(scope="module")
def image_fit(tmp_path_factory):
    """Image-shaped factors (8x6 pixels, 5 components) and their source matrix."""
    tmp = tmp_path_factory.mktemp("plots")
    rng = np.random.default_rng(1)
    W = rng.random((12, K)).astype(np.float32)
    H = rng.random((K, IMAGE[0] * IMAGE[1])).astype(np.float32)
    save_matrix(W @ H, tmp / "x.zarr", attrs={"image_shape": list(IMAGE)})
    factors = save_factors(tmp / "f.zarr", W, H, row_labels=[f"img{i}.png" for i in range(12)],
                           attrs={"image_shape": list(IMAGE), "error_history": [0.5, 0.2, 0.1],
                                  "source": str(tmp / "x.zarr")})
    return factors, tmp


@pytest.fixture(scope="module")
def table_fit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plots-table")
    rng = np.random.default_rng(2)
    W, H = rng.random((10, 3)).astype(np.float32), rng.random((3, 20)).astype(np.float32)
    save_matrix(W @ H, tmp / "x.zarr")
    factors = save_factors(tmp / "f.zarr", W, H, col_labels=[f"tag{j}" for j in range(20)],
                           attrs={"source": str(tmp / "x.zarr")})
    return factors, tmp


def _size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_component_images_and_grid(image_fit, tmp_path):
    factors, _ = image_fit
    paths = plots.component_images(factors, tmp_path / "c")
    assert [p.name for p in paths] == [f"component_{c:03d}.png" for c in range(K)]
    scale = plots.tile_scale(IMAGE)
    assert _size(paths[0]) == (IMAGE[1] * scale, IMAGE[0] * scale)
    with Image.open(paths[2]) as image:  # the brightest pixel is the component's maximum
        pixels = np.asarray(image.resize((IMAGE[1], IMAGE[0]), Image.Resampling.NEAREST))
    assert np.unravel_index(pixels.argmax(), IMAGE) == np.unravel_index(factors.H[2].argmax(), IMAGE)
    grid = plots.component_grid(factors, tmp_path / "grid.png", n_cols=3, scale=2, pad=1)
    assert _size(grid) == (3 * IMAGE[1] * 2 + 4, 2 * IMAGE[0] * 2 + 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "grid.png"]  # no temporary files left


def test_figures_have_expected_size(image_fit, table_fit, tmp_path):
    factors, tmp = image_fit
    assert _size(plots.reconstruction_plot(factors, tmp / "x.zarr", [0, 3], tmp_path / "r.png")) == (400, 400)
    assert _size(plots.error_curve(factors, tmp_path / "e.png")) == (600, 400)
    sweep = [{"n_components": k, "reconstruction_err": 1.0 / k, "relative_error": 0.1 / k, "n_iter": 5}
             for k in (2, 4, 8)]
    assert _size(plots.elbow_plot(sweep, tmp_path / "elbow.png")) == (600, 400)
    table, ttmp = table_fit
    assert _size(plots.reconstruction_plot(table, ttmp / "x.zarr", [1], tmp_path / "t.png")) == (800, 250)
    assert _size(plots.topics_plot(table, tmp_path / "topics.png")) == (900, 240)


def test_plot_all(image_fit, table_fit, tmp_path):
    written = plots.plot_all(image_fit[0], tmp_path / "img")
    assert set(written) == {"components", "grid", "convergence", "reconstruction"}
    assert len(written["components"]) == K
    written = plots.plot_all(table_fit[0], tmp_path / "table")
    assert set(written) == {"topics", "reconstruction"}


def test_bad_input(image_fit, table_fit, tmp_path):
    with pytest.raises(ValueError, match="no image_shape"):
        plots.component_grid(table_fit[0], tmp_path / "g.png")
    with pytest.raises(ValueError, match="component must be in 0..4"):
        plots.component_image(image_fit[0], 7, tmp_path / "c.png")
    with pytest.raises(ValueError, match="rows must be"):
        plots.reconstruction_plot(image_fit[0], image_fit[1] / "x.zarr", [99], tmp_path / "r.png")
    with pytest.raises(ValueError, match="no error history"):
        plots.error_curve([], tmp_path / "e.png")
    assert not list(tmp_path.iterdir())
