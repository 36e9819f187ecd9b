"""A fit's durable state: W written by row blocks, and checkpoints (W, H and the fit state).

Writes are atomic (a temporary name, then a rename) and every W chunk has exactly one writer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from distnmf import storage
from distnmf.storage import atomic_path
from distnmf.zarrnodes import check_safe

if TYPE_CHECKING:
    from distnmf.driver import FitConfig
    from distnmf.runner import Runner


@dataclass
class FitState:
    """The iterate on the driver and everything the stopping rule and the history need.

    A checkpoint holds exactly this plus W, so a fit continued from it takes the same steps
    as one never interrupted. ``errors`` has one relative error per iteration (for the beta
    losses other than Frobenius it lags one iteration: the last is known one pass later).
    """

    H: np.ndarray  # (k, n) float32
    iteration: int = 0
    errors: list[float] = field(default_factory=list)
    violations: list[float] = field(default_factory=list)  # HALS projected-gradient violation per iteration
    error_at_init: float = float("nan")  # MU: relative error of the starting point

    def copy(self) -> FitState:
        return FitState(self.H, self.iteration, list(self.errors), list(self.violations), self.error_at_init)


def _array(group: zarr.Group, name: str) -> zarr.Array:
    array = group[name]
    if not isinstance(array, zarr.Array):
        raise ValueError(f"{name} in {group.store_path} is a group, not an array")
    return array


def _read_w_task(path: str, start: int, stop: int) -> np.ndarray:
    W = _array(zarr.open_group(path, mode="r"), "W")
    check_safe(W, f"{path}/W")
    return np.asarray(W[start:stop])


def _write_w_task(W: np.ndarray, path: str, start: int) -> int:
    _array(zarr.open_group(path, mode="r+"), "W")[start:start + W.shape[0]] = W
    return W.shape[0]


def write_w(runner: Runner, w_handles: list[Any], bounds: tuple[int, ...], group_path: str | Path,
            k: int) -> None:
    """Write per-block W handles into a ``W`` array of an existing group.

    Chunks are ``gcd`` of the block sizes (the block size itself when blocks are equal), so
    every chunk lies inside one block and is written by exactly one task.
    """
    chunk_rows = math.gcd(*(b - a for a, b in zip(bounds[:-2], bounds[1:-1]))) or bounds[-1] - bounds[-2]
    group = zarr.open_group(group_path, mode="r+")
    group.create_array("W", shape=(bounds[-1], k), chunks=(chunk_rows, k), dtype=np.float32,
                       compressors=None, overwrite=True)
    written = runner.map("nmf-write-W", _write_w_task, w_handles, [str(group_path)] * len(w_handles),
                         list(bounds[:-1]))
    runner.gather(written)


def read_w(runner: Runner, path: str | Path, bounds: tuple[int, ...]) -> list[Any]:
    """Per-block W handles read from the ``W`` array of the group at ``path``."""
    return runner.map("nmf-read-W", _read_w_task, [str(path)] * (len(bounds) - 1), list(bounds[:-1]),
                      list(bounds[1:]))


def write_checkpoint(runner: Runner, path: str | Path, w_handles: list[Any], state: FitState,
                     bounds: tuple[int, ...], config: FitConfig) -> None:
    """Atomically replace the checkpoint at ``path`` with W and the fit state."""
    with atomic_path(path, overwrite=True) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=3)
        H = state.H
        group.create_array("H", shape=H.shape, chunks=H.shape, dtype=np.float32, compressors=None)[:] = H
        write_w(runner, w_handles, bounds, tmp, H.shape[0])
        group.attrs.update({"distnmf_checkpoint": {
            "iteration": state.iteration, "errors": list(map(float, state.errors)),
            "violations": list(map(float, state.violations)), "error_at_init": float(state.error_at_init),
            "n_rows": bounds[-1], "n_components": config.n_components, "solver": config.solver,
            "beta": config.beta}})


def read_checkpoint(path: str | Path, shape: tuple[int, int], k: int) -> FitState:
    """The fit state of a checkpoint (W stays on disk: :func:`read_w`), checked against X and k."""
    path = storage.as_location(path)
    if not storage.exists(path):
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    group = zarr.open_group(path, mode="r")
    check_safe(group, path)
    meta: Any = group.attrs.get("distnmf_checkpoint")
    if not isinstance(meta, dict) or "W" not in group or "H" not in group:
        raise ValueError(f"resume: {path} is not a distnmf checkpoint")
    H = np.asarray(_array(group, "H")[:])
    W_shape = _array(group, "W").shape
    if W_shape != (shape[0], k) or H.shape != (k, shape[1]):
        raise ValueError(f"resume: checkpoint W {W_shape} / H {H.shape} do not match X {shape} "
                         f"with n_components={k}")
    errors = [float(e) for e in meta["errors"]]
    return FitState(H, int(meta["iteration"]), errors, [float(v) for v in meta.get("violations", [])],
                    float(meta.get("error_at_init", errors[0] if errors else float("nan"))))
